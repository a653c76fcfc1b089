"""What a visual-token reduction costs and keeps, measured on one trained model (notebook 06).

A *configuration* is a compressor name and its options (``("vmtc", {"keep_ratio": 0.5})``;
``("identity", {})`` is the uncompressed reference). For each, on the same model in one process:

- :func:`visual_tokens`: how many visual tokens reach the LLM per image, measured on images (PruMerge's
  count is adaptive and VMTC can leave a cluster empty, so the budget is only a cap; FastV's count is
  what the layers after K see);
- :func:`analytic_flops` (:mod:`vlkit.flops`, on this model) and :func:`flops_7b` (the same reduction at
  LLaVA-1.5-7B's shapes): prefill FLOPs by part;
- :func:`vlkit.eval.efficiency.interleaved_prefills`: prefill latency, the configurations in turn, split
  at the LLM so that the compressor's seconds (outside the LLM) and the LLM's seconds saved are apart.

:func:`measure` does all of it; :func:`grid_table`, :func:`versus_reference`, :func:`best_ratios` and
:func:`break_even` turn the measurements and the evaluations into the notebook's tables. :func:`overlay`
returns what a method kept, merged where and dropped, for the figure drawn over the images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from vlkit import flops as F
from vlkit.compression import Identity, build_compressor
from vlkit.compressors.base import PlanCompressor
from vlkit.compressors.fastv import FastV
from vlkit.compressors.tome import ToMe

Config = tuple[str, dict]


@torch.no_grad()
def visual_tokens(model, pixel_values: torch.Tensor, batch_size: int = 64) -> float:
    """Mean visual tokens per image that reach the LLM with ``model``'s current compressor (notebook 06).

    A plan compressor's non-empty slots, counted on ``pixel_values`` (PruMerge pads its adaptive count to
    its cap, VMTC may leave a cluster empty; the model hides those slots from the LLM); FastV's kept
    tokens, which only the layers after K see (layers 0..K see every one); otherwise the fixed count.
    """
    c = model.compressor
    if isinstance(c, FastV):
        return float(c.effective_tokens(model.num_image_tokens))
    if not isinstance(c, PlanCompressor):
        return float(model.num_image_tokens)
    counts = []
    for i in range(0, len(pixel_values), batch_size):
        plan = c.plan(*model.compression_inputs(pixel_values[i:i + batch_size]))
        counts.append(plan.mask.sum(1).float())
    return float(torch.cat(counts).mean())


def analytic_flops(model, n_text: int) -> F.Flops:
    """Prefill FLOPs of one sequence of ``model`` (its compressor attached) with ``n_text`` text tokens."""
    return F.prefill_flops(**F.shapes_of(model), n_text=n_text)


def flops_7b(method: str, options: dict, n_text: int) -> F.Flops:
    """The same reduction (``method`` with ``options``) at LLaVA-1.5-7B's shapes (:func:`vlkit.flops.llava_7b`).

    The compressor is built for the 7B widths without a model, so ToMe plans its merges over the 7B
    tower's 23 merging layers (which reach far lower ratios than the tiny tower's 3), and PruMerge counts
    at its cap (its padded slots cost the LLM as much as filled ones)."""
    shapes = F.llava_7b()
    reduction = None
    if method != "identity":
        c = build_compressor(method, shapes["llm"].hidden, **options)
        reduction = F.reduction_for(c, shapes["vision"], shapes["llm"], shapes["n_patches"], shapes["cls"])
    return F.prefill_flops(**shapes, n_text=n_text, reduction=reduction)


def _images(problems: dict[str, dict], root, n: int):
    from vlkit.eval.scoring import problem_images
    sub = dict(list({pid: p for pid, p in problems.items() if p["image"]}.items())[:n])
    return sub, problem_images(sub, root)


def measure(model, processor, configs: dict[str, Config], problems: dict[str, dict], root: str | Path,
            reference: str, token_images: int = 256, batch: int = 8, repeats: int = 7) -> dict[str, dict]:
    """Every configuration measured on ``model``, in one process (notebook 06).

    ``problems``: ScienceQA-format problems (the test split); the first ``token_images`` with an image
    are counted (:func:`visual_tokens`), the prompts of the first ``batch`` are timed (the prompt the
    suite answers, as :mod:`vlkit.eval.suite` measures). ``reference`` names the configuration the
    others are compared with. Returns per name: ``tokens``, ``n_text`` (text tokens of the timed
    prompts, the same for all), ``flops`` and ``flops_7b`` (by part, :meth:`vlkit.flops.Flops.as_dict`),
    ``latency`` (:func:`vlkit.eval.efficiency.interleaved_prefills`). The model is left uncompressed.
    """
    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.eval.efficiency import interleaved_prefills
    if reference not in configs:
        raise ValueError(f"reference {reference!r} is not one of the configurations")
    counted, images = _images(problems, root, token_images)
    if not counted:
        raise ValueError("measure: no problem with an image to count visual tokens on")
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    timed = dict(list(counted.items())[:batch])
    prompts = [sqa.choice_prompt(p) for p in timed.values()]
    out, calls = {}, {}
    try:
        for name, (method, options) in configs.items():
            model.set_token_reduction(method, **options)
            b = processor.prompt(prompts, images[: len(timed)])
            b.pop("labels", None)
            # text tokens per prompt: its real tokens minus the image slots (identical for every method)
            n_text = int(round(float(b["attention_mask"].sum(1).float().mean()) - model.num_image_tokens))
            out[name] = {"method": method, "options": dict(options), "tokens": visual_tokens(model, pixels),
                         "slots": model.num_image_tokens, "n_text": n_text,
                         "flops": analytic_flops(model, n_text).as_dict(),
                         "flops_7b": flops_7b(method, options, n_text).as_dict()}
            if isinstance(model.compressor, ToMe):
                out[name]["tome_merges"] = list(model.compressor.merges)
            calls[name] = ((lambda m=method, o=options: model.set_token_reduction(m, **o)), b)
        latency = interleaved_prefills(model, calls, reference=reference, repeats=repeats)
    finally:
        model.set_token_reduction("identity")
    for name in out:
        out[name]["latency"] = latency[name]
    return out


# --- tables ------------------------------------------------------------------------------------------


METRICS = ("IMG", "Binding", "Counting", "Short VQA")


def metrics_of(result: dict) -> dict[str, float | None]:
    """IMG, Binding, Counting and Short VQA accuracy (%) of a result file (:mod:`vlkit.results`)."""
    m = result["metrics"]
    short = m.get("Short VQA")
    return {"IMG": m["ScienceQA"]["IMG"], "Binding": m["Binding"], "Counting": m.get("Counting"),
            "Short VQA": short["accuracy"] if isinstance(short, dict) else short}


def grid_table(points: Sequence, results: dict[str, dict], measured: dict[str, dict], reference: str) -> pd.DataFrame:
    """One row per grid point: method, keep ratio, visual tokens reaching the LLM, IMG / Binding / Counting /
    Short VQA accuracy (%), prefill GFLOPs and their ratio to ``reference`` (this model, and at 7B
    scale), prefill milliseconds and their ratio (the methods interleaved in one process).

    ``points``: objects with ``name``, ``method`` and ``ratio`` (:class:`vlkit.recipes.compression.Point`);
    ``results`` and ``measured`` by point name (:func:`measure`)."""
    ref = measured[reference]
    rows = []
    for p in points:
        m = measured[p.name]
        rows.append({"point": p.name, "method": p.method, "keep ratio": p.ratio, "tokens": m["tokens"],
                     **metrics_of(results[p.name]),
                     "GFLOPs": m["flops"]["total"] / 1e9, "FLOPs x": m["flops"]["total"] / ref["flops"]["total"],
                     "7B TFLOPs": m["flops_7b"]["total"] / 1e12,
                     "7B FLOPs x": m["flops_7b"]["total"] / ref["flops_7b"]["total"],
                     "prefill ms": m["latency"]["prefill_ms"], "latency x": m["latency"]["ratio"]})
    return pd.DataFrame(rows).set_index("point")


def versus_reference(correct: dict[str, np.ndarray], reference: str, margin: float, n_boot: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Each point minus ``reference``, paired over the same problems (:func:`vlkit.stats.paired_bootstrap`),
    with the verdict on "no worse than the reference by more than ``margin`` points".

    ``correct``: point name -> per-problem scores ``[problems]`` or ``[seeds, problems]`` (1/0 or in [0, 1])."""
    from vlkit import stats
    rows = {}
    for name, scores in correct.items():
        if name == reference:
            continue
        c = stats.paired_bootstrap(correct[reference], scores, n_boot=n_boot, seed=seed)
        rows[name] = {"difference": c.difference, "low": c.low, "high": c.high,
                      "verdict": stats.verdict(c, "no worse", margin)}
    return pd.DataFrame.from_dict(rows, orient="index")


def best_ratios(table: pd.DataFrame, comparison: pd.DataFrame, metric: str = "IMG") -> pd.DataFrame:
    """Per method, the lowest keep ratio whose ``metric`` is kept (its :func:`versus_reference` verdict is
    "reproduced": the interval of the difference lies above the margin), with what it keeps and costs.

    A method kept at no ratio gets its highest-scoring ratio instead, marked ``kept=False``."""
    rows = {}
    for method, part in table.join(comparison, how="inner").groupby("method", sort=False):
        kept = part[part["verdict"] == "reproduced"]
        pick = kept.sort_values("keep ratio").iloc[0] if len(kept) else part.sort_values(metric).iloc[-1]
        rows[method] = {"best keep ratio": pick["keep ratio"], "kept": bool(len(kept)), "tokens": pick["tokens"],
                        metric: pick[metric], "difference": pick["difference"], "low": pick["low"],
                        "high": pick["high"], "FLOPs x": pick["FLOPs x"], "7B FLOPs x": pick["7B FLOPs x"],
                        "latency x": pick["latency x"]}
    return pd.DataFrame.from_dict(rows, orient="index")


def break_even(points: Sequence, measured: dict[str, dict], reference: str) -> pd.DataFrame:
    """Does compressing pay for itself? Per point, against ``reference`` in the same process:

    ``compressor ms``: the extra milliseconds outside the LLM (tower, connector, compressor; negative when
    the tower itself gets cheaper, as with ToMe); ``LLM ms saved``; ``net ms`` saved (> 0: it pays);
    and at LLaVA-7B scale, analytically, the compressor's FLOPs against the LLM (and LM head) FLOPs it
    saves. FastV ranks inside the LLM, so its overhead is in its LLM milliseconds."""
    ref = measured[reference]
    r_lat, r7 = ref["latency"], ref["flops_7b"]
    rows = {}
    for p in points:
        if p.name == reference:
            continue
        m = measured[p.name]
        lat, f7 = m["latency"], m["flops_7b"]
        saved7 = (r7["llm"] + r7["lm_head"]) - (f7["llm"] + f7["lm_head"])
        rows[p.name] = {"method": p.method, "keep ratio": p.ratio,
                        "compressor ms": lat["rest_ms"] - r_lat["rest_ms"], "LLM ms saved": r_lat["llm_ms"] - lat["llm_ms"],
                        "net ms": r_lat["prefill_ms"] - lat["prefill_ms"],
                        "7B compressor GFLOPs": (f7["compressor"] + f7["vision"] - r7["vision"]) / 1e9,
                        "7B LLM GFLOPs saved": saved7 / 1e9}
        rows[p.name]["pays"] = rows[p.name]["net ms"] > 0
    return pd.DataFrame.from_dict(rows, orient="index")


def paying(pays: pd.DataFrame, at: float = 0.5) -> pd.DataFrame:
    """Per method, from :func:`break_even`: the keep ratios at which it saves prefill time net on this model
    (``pays at``), its net milliseconds at ``at``, and at LLaVA-7B scale the compressor's FLOPs per LLM FLOP
    it saves at ``at`` (well below 1: compressing pays there)."""
    rows = {}
    for method, part in pays.groupby("method", sort=False):
        row = part.set_index("keep ratio")
        ratios = sorted(part.loc[part["pays"], "keep ratio"])
        rows[method] = {"pays at": ", ".join(f"{100 * r:g}%" for r in ratios) or "no ratio",
                        f"net ms at {100 * at:g}%": row.loc[at, "net ms"] if at in row.index else None,
                        f"7B compressor / LLM saved at {100 * at:g}%":
                            row.loc[at, "7B compressor GFLOPs"] / row.loc[at, "7B LLM GFLOPs saved"]
                            if at in row.index and row.loc[at, "7B LLM GFLOPs saved"] else None}
    return pd.DataFrame.from_dict(rows, orient="index")


def metric_records(table: pd.DataFrame, best: pd.DataFrame, pays: pd.DataFrame) -> dict:
    """The grid's numbers as ``vlkit.record`` names (notebook 06): ``<point>_<metric>`` for every point of
    :func:`grid_table` ("vmtc 12.5%" -> ``vmtc_12_5_img``), ``<method>_best_ratio`` (None where no ratio keeps
    accuracy) and ``<point>_net_ms``; a missing value (an empty subset) is None, not NaN."""
    from vlkit.results import slug

    def key(name: str) -> str:
        return slug(name).replace("-", "_")

    def value(v):
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
    out = {}
    columns = {"IMG": "img", "Binding": "binding", "Counting": "counting", "Short VQA": "short_vqa", "tokens": "tokens",
               "FLOPs x": "flops_ratio", "7B FLOPs x": "flops_7b_ratio", "latency x": "latency_ratio"}
    for name, row in table.iterrows():
        out.update({f"{key(name)}_{what}": value(row[col]) for col, what in columns.items()})
    for method, b in best.iterrows():
        out[f"{key(method)}_best_ratio"] = float(b["best keep ratio"]) if b["kept"] else None
    for name, p in pays.iterrows():
        out[f"{key(name)}_net_ms"] = float(p["net ms"])
    return out


# --- what a method kept, for the figure ---------------------------------------------------------------


@torch.no_grad()
def overlay(model, processor, image, question: str) -> dict | None:
    """What ``model``'s compressor does with ``image``'s patches: ``assignment`` [N] (the output slot of
    each patch, -1 dropped) and ``kept`` [N] (the tokens it selected), as numpy arrays; None for ToMe,
    whose merges inside the tower leave no per-patch assignment at the connector.

    Plan compressors: their :class:`vlkit.compressors.merge.MergePlan`; FastV: the visual tokens the layers
    after K kept for ``question`` (its ranking token is the prompt's last), each its own slot; no
    compressor: every patch kept."""
    c = model.compressor
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    if isinstance(c, ToMe):
        return None
    if isinstance(c, PlanCompressor):
        plan = c.plan(*model.compression_inputs(pixels))
        return {"assignment": plan.assignment[0].numpy(), "kept": plan.kept[0].numpy()}
    n = model.num_image_tokens
    if isinstance(c, FastV):
        batch = processor.prompt([question], [image])
        batch.pop("labels", None)
        model(**batch)
        image_slots = batch["input_ids"][0] == model.config.image_token_id
        kept = (~c.pruned[0][image_slots]).numpy()
        return {"assignment": np.where(kept, np.arange(n), -1), "kept": kept}
    if isinstance(c, Identity):
        return {"assignment": np.arange(n), "kept": np.ones(n, dtype=bool)}
    raise ValueError(f"overlay: no drawing for compressor {c.name!r}")


def overlays(model, processor, image, question: str, configs: dict[tuple[str, float], Config]) -> dict:
    """:func:`overlay` of each configuration, keyed as ``configs`` is (e.g. by (method, ratio)); the model is
    left uncompressed."""
    out = {}
    try:
        for key, (method, options) in configs.items():
            model.set_token_reduction(method, **options)
            out[key] = overlay(model, processor, image, question)
    finally:
        model.set_token_reduction("identity")
    return out
