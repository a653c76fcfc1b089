"""The attention explorer: where a VLModel looks while it answers, in JupyterLab (notebooks 06, 07).

``AttentionExplorer(model, processor, image, prompt)`` asks the model once (:func:`vlkit.attention_maps.
capture_generation`: a greedy answer with every decoding step's attention, and the vision tower's), then
redraws every view from that cache when a control moves: no model call per interaction. Controls: the view,
the layer (slider), the head (or their mean) and the query token (the prompt's text tokens and the answer's).

Views are a registry, like connectors and compressors: a class with ``@register_view("name")`` and a
``draw(ax, cache, selection)`` method appears in every explorer built afterwards, so a later method adds its
own view (CMAI's focus score and inhibited pairs, notebook 07) without changing this file. Built in:

- ``text → image``: the selected query's attention to each visual token, over the image's patch grid;
- ``vision [cls] → patches``: the vision tower's [cls] attention per layer and head;
- ``kept + clusters``: what a plan compressor (VMTC, VisionZip, PruMerge, pool, random) kept and merged;
- ``answer → image per step``: how much of each decoding step's attention went to the image.

The picture is a PNG in an ``ipywidgets.Image`` (matplotlib's Agg, no interactive backend to install), so
the state a test reads is the state the browser shows. Widgets do not render in an executed notebook file:
:meth:`AttentionExplorer.snapshot` saves a static grid of the views to ``figures/`` for papermill runs.
"""
from __future__ import annotations

import contextlib
import html
import io
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import ipywidgets as W
import numpy as np
from matplotlib.figure import Figure

from vlkit import atomic, figures
from vlkit.attention_maps import GenerationAttention, capture_generation
from vlkit.plots import attention as plots
from vlkit.registry import Registry

VIEWS = Registry("attention view")
register_view = VIEWS.register
MEAN = "mean"  # the head control's value for the mean over heads


@dataclass(frozen=True)
class Selection:
    """What the controls pick: ``layer`` of the view's tower, ``head`` (None: the mean over heads) and
    ``token``, a row of :attr:`GenerationAttention.queries`."""

    layer: int
    head: int | None
    token: int


class View:
    """One way of drawing a :class:`GenerationAttention` (notebooks 06, 07).

    ``tower``: whose layers and heads the controls pick ("llm", "vision", or None when the view has neither);
    ``uses_token``: whether the query token control applies; ``order``: its place in the view menu.
    :meth:`unavailable` says why this view cannot draw a given capture (None: it can); :meth:`prepare`
    computes, once when an explorer is built, anything more it needs from the model (kept in
    ``cache.extras[name]``), so that :meth:`draw` never calls the model.
    """

    name = "base"
    tower: str | None = "llm"
    uses_token = True
    order = 100

    def unavailable(self, cache: GenerationAttention) -> str | None:
        return None

    def prepare(self, model, processor, cache: GenerationAttention) -> Any:
        return None

    def draw(self, ax, cache: GenerationAttention, selection: Selection) -> None:
        raise NotImplementedError


def _head(head: int | None) -> str:
    return "mean of heads" if head is None else f"head {head}"


@register_view("text → image")
class TextToImage(View):
    """The query token's attention to each visual token, on the patch grid where the tokens are patches."""

    order = 0

    def draw(self, ax, cache, selection):
        q = cache.query(selection.token)
        per_token = cache.to_image(selection.layer, selection.head, selection.token)
        who = f"step {q.index} (chose {q.label})" if q.kind == "answer" else f"prompt token {q.label}"
        title = (f"LLM layer {selection.layer}, {_head(selection.head)}\n"
                 f"{who} → image: {per_token.sum():.0%} of its attention")
        on_grid = cache.on_grid(per_token)
        if on_grid is None:
            plots.token_strip(per_token, ax, title)
        else:
            plots.patch_heatmap(cache.image, on_grid, cache.grid, ax, title, colorbar="attention per patch")


@register_view("vision [cls] → patches")
class VisionCls(View):
    """The vision tower's [cls] attention over the patches (VMTC's importance at the feature layer)."""

    tower, uses_token, order = "vision", False, 10

    def draw(self, ax, cache, selection):
        row = cache.cls_attention(selection.layer, selection.head)
        who = "[cls]" if cache.vision_has_cls else "attention received (no [cls])"
        title = f"vision layer {selection.layer}, {_head(selection.head)}\n{who} → patches"
        rows, cols = cache.grid
        if row.size == rows * cols:
            plots.patch_heatmap(cache.image, row, cache.grid, ax, title)
        else:  # ToMe merged tokens inside the tower: they are no longer the patch grid
            plots.token_strip(row, ax, f"{title} ({row.size} merged tokens)", xlabel="tower token")


@register_view("kept + clusters")
class KeptAndClusters(View):
    """What a plan compressor did with each patch: kept, merged into a cluster, or dropped (notebook 06)."""

    tower, uses_token, order = None, False, 20

    def unavailable(self, cache):
        if cache.kept is None:
            return (f"compressor {cache.compressor!r} makes no per-patch plan (VMTC and the other connector-side "
                    "compressors do: VLModel.set_token_reduction)")
        return None

    def draw(self, ax, cache, selection):
        slots = cache.patch_slot
        kept = int(cache.kept.sum())
        merged = len(np.unique(slots[(slots >= 0) & ~cache.kept]))
        title = (f"{cache.compressor}: {kept} kept, {merged} merged tokens, {int((slots < 0).sum())} dropped\n"
                 f"of {slots.size} patches")
        plots.plan_overlay(cache.image, slots, cache.kept, ax, title)


@register_view("answer → image per step")
class AnswerSteps(View):
    """Per generated token, the share of that step's attention that went to the image."""

    order = 30

    def draw(self, ax, cache, selection):
        answer = cache.answer
        shares = cache.image_share(selection.layer, selection.head)[len(cache.queries) - len(answer):]
        q = cache.query(selection.token)
        title = f"LLM layer {selection.layer}, {_head(selection.head)}: attention on the image per answer step"
        plots.image_share_bars([a.label for a in answer], shares, ax,
                               highlight=q.index if q.kind == "answer" else None, title=title)


def views() -> list[View]:
    """One instance of every registered view, in menu order."""
    return sorted((VIEWS.build(name) for name in VIEWS.names()), key=lambda v: (v.order, v.name))


class AttentionExplorer:
    """An ipywidgets explorer of one answer's attention (notebooks 06, 07).

    ``AttentionExplorer(model, processor, image, prompt)`` with any :class:`vlkit.model.VLModel` and its
    :class:`vlkit.processor.VLProcessor`; ``image`` a PIL image (or pixel values of the tower's size);
    ``max_new_tokens`` of greedy answer. Display it (a notebook cell's last value) to get the controls;
    :meth:`select` sets them from code, :meth:`snapshot` saves the views as one PNG. ``figure`` is the
    matplotlib figure on show, ``redraw_ms`` how long the last redraw took, ``error`` why the last one
    failed (also shown in the widget, in place of a picture).

    The last ``memo`` pictures are kept, so going back to a pick shows it at once; a view that no control
    changes ("kept + clusters": 576 outlined patches take ~0.3 s at LLaVA's grid) is drawn when the explorer is
    built. ``benchmarks/bench_explorer.py`` times redraws.
    """

    def __init__(self, model, processor, image, prompt: str, max_new_tokens: int = 12,
                 figsize: tuple[float, float] = (5.2, 4.4), dpi: int = 100, memo: int = 64):
        self.cache = capture_generation(model, processor, image, prompt, max_new_tokens)
        self.figsize, self.dpi, self.memo = figsize, dpi, memo
        self._pictures: OrderedDict[tuple, tuple[Figure, bytes]] = OrderedDict()
        self.views: dict[str, View] = {}
        self.unavailable: dict[str, str] = {}
        for view in views():
            reason = view.unavailable(self.cache)
            if reason is None:
                self.views[view.name] = view
                extra = view.prepare(model, processor, self.cache)
                if extra is not None:
                    self.cache.extras[view.name] = extra
            else:
                self.unavailable[view.name] = reason
        c = self.cache
        self._depth = {"llm": c.llm_layers, "vision": len(c.vision)}
        self._heads = {"llm": c.llm_heads, "vision": c.vision[0].shape[0]}
        # each tower remembers its own layer and head: switching views and back keeps what was picked
        self._picked = {t: {"layer": n - 1, "head": MEAN} for t, n in self._depth.items()}
        self.figure: Figure | None = None
        self.redraw_ms: float | None = None
        self.error: str | None = None
        self._holding = False
        self._build_widgets()
        self._configure(self.views[self.view.value])
        self._redraw()
        for view in self.views.values():
            if view.tower is None and not view.uses_token:
                with contextlib.suppress(Exception):  # an error shows when the view is picked
                    self._picture(view, self.selection())

    # --- widgets ---------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        c = self.cache
        style = {"description_width": "initial"}
        self.view = W.Dropdown(options=list(self.views), description="view", style=style)
        # continuous_update off: a dragged slider redraws where it is let go, not at every pixel
        self.layer = W.IntSlider(min=0, max=1, description="layer", continuous_update=False, style=style)
        self.head = W.Dropdown(options=[MEAN], description="head", style=style,
                               layout=W.Layout(width="140px"))
        first_answer = len(c.queries) - len(c.answer)
        self.token = W.Dropdown(options=[(f"{q.kind} {q.index}: {q.label}", i) for i, q in enumerate(c.queries)],
                                value=first_answer, description="query token", style=style)
        # at the figure's own pixel size: a VBox stretches its children to its width, which would scale it up
        self.image = W.Image(format="png", layout=W.Layout(width=f"{round(self.figsize[0] * self.dpi)}px"))
        self.message = W.HTML()
        self.view.observe(self._on_view, names="value")
        for control in (self.layer, self.head, self.token):
            control.observe(self._on_control, names="value")
        self.widget = W.VBox([W.HBox([self.view, self.layer, self.head, self.token]), self.image, self.message])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Change several controls with one redraw after, not one per change."""
        held, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = held

    def _configure(self, view: View) -> None:
        """Point the layer and head controls at ``view``'s tower (or disable them), and the token control."""
        with self._held():
            tower = view.tower
            self.layer.disabled = self.head.disabled = tower is None
            if tower is not None:
                picked = self._picked[tower]
                self.layer.max = self._depth[tower] - 1
                self.layer.value = picked["layer"]
                self.head.options = [MEAN] + list(range(self._heads[tower]))
                self.head.value = picked["head"]
            self.token.disabled = not view.uses_token

    def _on_view(self, change) -> None:
        if self._holding:
            return
        self._configure(self.views[change["new"]])
        self._redraw()

    def _on_control(self, change) -> None:
        if self._holding:
            return
        tower = self.views[self.view.value].tower
        if tower is not None:
            self._picked[tower] = {"layer": self.layer.value, "head": self.head.value}
        self._redraw()

    def selection(self) -> Selection:
        """What the controls pick now."""
        return Selection(self.layer.value, None if self.head.value == MEAN else int(self.head.value),
                         self.token.value)

    # --- drawing ---------------------------------------------------------------------------------
    def render(self, view: str, selection: Selection | None = None) -> Figure:
        """A new figure of ``view`` at ``selection`` (default: the controls'), drawn from the cache."""
        # fixed margins, not a layout engine: constrained layout measured a third of each redraw
        fig = Figure(figsize=self.figsize)
        fig.subplots_adjust(left=0.1, right=0.85, top=0.86, bottom=0.17)
        self._view(view).draw(fig.add_subplot(), self.cache, selection or self.selection())
        return fig

    def _view(self, name: str) -> View:
        if name in self.views:
            return self.views[name]
        if name in self.unavailable:
            raise ValueError(f"view {name!r} is not available for this model: {self.unavailable[name]}")
        raise ValueError(f"unknown view {name!r}; this explorer has: {', '.join(self.views)}")

    def _picture(self, view: View, selection: Selection) -> tuple[Figure, bytes]:
        """The figure and PNG of ``view`` at ``selection``, from the memo when it was drawn lately."""
        key = (view.name, *((selection.layer, selection.head) if view.tower else ()),
               selection.token if view.uses_token else None)
        if key in self._pictures:
            self._pictures.move_to_end(key)
            return self._pictures[key]
        fig = self.render(view.name, selection)
        buf = io.BytesIO()
        # zlib level 1: a third the encoding time of the default for a picture a browser shows once
        fig.savefig(buf, format="png", dpi=self.dpi, pil_kwargs={"compress_level": 1})
        if self.memo > 0:
            self._pictures[key] = fig, buf.getvalue()
            while len(self._pictures) > self.memo:
                self._pictures.popitem(last=False)
        return fig, buf.getvalue()

    def _redraw(self) -> None:
        start = time.perf_counter()
        try:
            fig, png = self._picture(self._view(self.view.value), self.selection())
        except Exception as e:  # noqa: BLE001 - shown in the widget: an observer's exception would vanish in a log
            self.figure, self.error, self.image.value = None, f"{type(e).__name__}: {e}", b""
            self.message.value = (f"<b style='color:#b00020'>cannot draw {html.escape(self.view.value)}: "
                                  f"{html.escape(self.error)}</b>")
            return
        self.figure, self.error, self.image.value = fig, None, png
        self.redraw_ms = (time.perf_counter() - start) * 1e3
        self.message.value = self._caption()

    def _caption(self) -> str:
        c = self.cache
        lines = [f"<b>prompt</b> {html.escape(c.prompt)} &nbsp; <b>answer</b> {html.escape(c.answer_text)!s}"]
        lines += [f"<i>{html.escape(name)}</i>: not shown, {html.escape(why)}" for name, why in self.unavailable.items()]
        return "<br>".join(lines)

    def select(self, view: str | None = None, layer: int | None = None, head: int | str | None = None,
               token: int | None = None) -> "AttentionExplorer":
        """Set controls from code and redraw once; a layer, head or token out of range is an error.

        ``head``: a head's index or ``"mean"``; ``layer`` and ``head`` count in the (new) view's tower.
        """
        v = self._view(view if view is not None else self.view.value)
        if v.tower is not None:
            if layer is not None and not (isinstance(layer, (int, np.integer)) and 0 <= layer < self._depth[v.tower]):
                raise IndexError(f"layer {layer!r} is out of range: the {v.tower} has {self._depth[v.tower]} layers")
            if head is not None and head != MEAN and not (isinstance(head, (int, np.integer))
                                                           and 0 <= head < self._heads[v.tower]):
                raise IndexError(f"head {head!r} is out of range: the {v.tower} has {self._heads[v.tower]} heads "
                                 f"(or {MEAN!r})")
        elif layer is not None or head is not None:
            raise ValueError(f"view {v.name!r} has no layers or heads to pick")
        if token is not None:
            self.cache.query(token)
        with self._held():
            self.view.value = v.name
            self._configure(v)
            if layer is not None:
                self.layer.value = int(layer)
            if head is not None:
                self.head.value = head if head == MEAN else int(head)
            if token is not None:
                self.token.value = int(token)
            if v.tower is not None:
                self._picked[v.tower] = {"layer": self.layer.value, "head": self.head.value}
        self._redraw()
        if self.error:
            raise RuntimeError(f"cannot draw view {v.name!r}: {self.error}")
        return self

    def snapshot(self, name: str | Path = "attention_explorer", views: list[str] | None = None,
                 dpi: int = 120) -> Path:
        """Save ``views`` (default: every available one) as one grid at the controls' current picks
        (each tower's own layer and head) and return the file (notebooks 06, 07).

        ``name``: a figure name (saved as ``figures/<name>.png`` by :func:`vlkit.figures.save`, for papermill
        runs, where widgets do not render) or a path ending in ``.png``.
        """
        names = list(self.views) if views is None else list(views)
        if not names:
            raise ValueError("snapshot: no views to draw")
        chosen = [self._view(n) for n in names]
        cols = min(2, len(chosen))
        rows = math.ceil(len(chosen) / cols)
        fig = Figure(figsize=(self.figsize[0] * cols, self.figsize[1] * rows + 0.5), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, view in zip(axes, chosen):
            picked = self._picked.get(view.tower, {"layer": 0, "head": MEAN})
            view.draw(ax, self.cache, Selection(picked["layer"], None if picked["head"] == MEAN else picked["head"],
                                                self.token.value))
        for ax in axes[len(chosen):]:
            ax.set_axis_off()
        fig.suptitle(f"{self.cache.prompt!r} → {self.cache.answer_text!r}", fontsize=10)
        path = Path(name)
        if path.suffix.lower() != ".png":
            if path.name != str(name):
                raise ValueError(f"snapshot: {name!r} is neither a figure name nor a path ending in .png")
            return figures.save(fig, str(name), dpi=dpi)
        with atomic.atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        return path
