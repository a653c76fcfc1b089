"""What a vision-language model is, and how it trains: specs as frozen dataclasses (notebooks 03-08).

Every notebook describes its rows with these two specs and nothing else, so that the core
(:mod:`vlkit.build`, :mod:`vlkit.train`, :mod:`vlkit.stages`, :mod:`vlkit.eval`) never needs to
know which paper a row belongs to:

- :class:`ModelSpec`: the backbones (notebook 02's tiny defaults, or checkpoint names / paths),
  the connector and its options, the vision feature layer, modules inserted into the towers'
  blocks (:mod:`vlkit.insertions`), the visual-token compressor and the LLM's attention function;
- :class:`TrainSpec`: which parameter groups train at which learning rate (everything else is
  frozen), steps, batch, precision, LoRA, and the training seed.

Their cache keys are :func:`vlkit.cache.spec_key` of the dataclasses: every field counts, except
those declared with :func:`runtime` (a progress bar cannot change a result). Names of registered
parts are checked when a spec is made, so a typo fails before anything trains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Parameter kinds a TrainSpec group can name without patterns (see vlkit.train.groups).
PARAMETER_KINDS = ("connector", "llm", "vision", "insertions", "lora")
LLM_QUANTIZATIONS = ("nf4", "int8")
VISION_ATTENTIONS = ("eager", "sdpa")
PRECISIONS = ("no", "bf16", "auto")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def runtime(default: Any) -> Any:
    """A spec field that cannot change a result (progress bars, worker counts): left out of cache keys."""
    return field(default=default, compare=False, metadata={"key": False})


def checkpoint(default: Any = None) -> Any:
    """A spec field naming a checkpoint: its cache key is the files' content, not the path."""
    return field(default=default, metadata={"checkpoint": True})


def _freeze(spec, name: str, value) -> None:
    object.__setattr__(spec, name, value)


def _known(kind: str, name: str, names: list[str]) -> None:
    if name not in names:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(names)}")


@dataclass(frozen=True)
class InsertionSpec:
    """Modules inserted into the towers' blocks (notebook 04's adapters; :mod:`vlkit.insertions`).

    ``name``: a registered insertion; ``towers``: ``"llm"`` and/or ``"vision"``; ``places``:
    ``"attention"`` (after the block's input norm, before attention) and/or ``"mlp"`` (after the
    norm before the MLP); ``layers``: block indices (None: every block); ``options`` go to the
    module's constructor.
    """

    name: str
    towers: tuple[str, ...] = ("llm",)
    places: tuple[str, ...] = ("attention",)
    layers: tuple[int, ...] | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        from vlkit.insertions import INSERTIONS, PLACES, TOWERS
        _known("insertion", self.name, INSERTIONS.names())
        _freeze(self, "towers", tuple(self.towers))
        _freeze(self, "places", tuple(self.places))
        for t in self.towers:
            _known("tower", t, list(TOWERS))
        for p in self.places:
            _known("insertion place", p, list(PLACES))
        if not self.towers or not self.places:
            raise ValueError(f"insertion {self.name!r}: towers and places must not be empty")
        if self.layers is not None:
            _freeze(self, "layers", tuple(int(i) for i in self.layers))
        _freeze(self, "options", dict(self.options))


@dataclass(frozen=True)
class ModelSpec:
    """One vision-language model: backbones + connector + insertions + compressor + attention (notebook 03).

    ``backbones``: a :class:`vlkit.backbones.BackboneConfig` for notebook 02's tiny towers, used
    for whatever of ``vision`` / ``llm`` / ``tokenizer`` (checkpoint names or local paths) is
    None. ``llm_quantization``: load the LLM's linear layers in 4-bit ``"nf4"`` or ``"int8"``
    through bitsandbytes (QLoRA); inserted modules are added after quantising, so they stay in
    full precision. ``max_length``: tokens per example (the processor's cut, visual tokens
    included). ``template``: how conversations become tokens and answer labels: ``"auto"`` (the
    tokenizer's chat template where it marks assistant turns, else LLaVA's ``vicuna_v1``),
    ``"tokenizer"``, or a LLaVA template name (:mod:`vlkit.templates`). ``vision_attention``: the
    vision tower's attention implementation, ``"eager"`` or ``"sdpa"`` (None: the tower's own); eager
    trains faster where gradients flow through the tower (``benchmarks/bench_bottleneck.py``).
    """

    backbones: Any = None
    vision: str | None = checkpoint()
    llm: str | None = checkpoint()
    tokenizer: str | None = checkpoint()
    llm_quantization: str | None = None
    connector: str = "linear"
    connector_options: dict = field(default_factory=dict)
    vision_feature_layer: int = -2
    insertions: tuple[InsertionSpec, ...] = ()
    compressor: str = "identity"
    compressor_options: dict = field(default_factory=dict)
    attention: str = "eager"
    attention_options: dict = field(default_factory=dict)
    vision_attention: str | None = None
    max_length: int = 192
    template: str = "auto"

    def __post_init__(self):
        from vlkit.attention import available_attention
        from vlkit.compression import available_compressors
        from vlkit.connectors import CONNECTORS
        _known("connector", self.connector, CONNECTORS.names())
        _known("compressor", self.compressor, available_compressors())  # registers vlkit.compressors
        _known("attention function", self.attention, available_attention())
        from vlkit.templates import CHOICES
        _known("conversation template", self.template, list(CHOICES))
        if self.vision_attention is not None:
            _known("vision attention", self.vision_attention, list(VISION_ATTENTIONS))
        if self.llm_quantization is not None:
            _known("LLM quantization", self.llm_quantization, list(LLM_QUANTIZATIONS))
        if self.backbones is None and not (self.vision and self.llm):
            raise ValueError("a ModelSpec needs backbones (notebook 02's config) or both vision and llm checkpoints")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        for name in ("connector_options", "compressor_options", "attention_options"):
            _freeze(self, name, dict(getattr(self, name)))
        _freeze(self, "insertions", tuple(self.insertions))
        places = [(t, p, i) for s in self.insertions for t in s.towers for p in s.places for i in (s.layers or ("*",))]
        if len(places) != len(set(places)):
            raise ValueError("two insertions claim the same tower, place and layer; give each its own place")

    def replace(self, **changes) -> "ModelSpec":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ParamGroup:
    """One group of trained parameters and its learning rate (notebook 03).

    Without ``patterns`` the name is a parameter kind: ``connector`` (connector and compressor),
    ``llm`` (the LLM's own weights), ``vision`` (the vision tower's own weights), ``insertions``
    (every inserted module, wherever it sits) or ``lora`` (LoRA adapters). With ``patterns``
    (``fnmatch`` patterns on parameter names, e.g. ``"language_model.*norm*"``) the group holds the
    parameters they match and the name is only a label.
    """

    name: str
    lr: float
    weight_decay: float | None = None
    patterns: tuple[str, ...] = ()

    def __post_init__(self):
        _freeze(self, "patterns", tuple(self.patterns))
        if not self.patterns:
            _known("parameter group", self.name, list(PARAMETER_KINDS))
        if not self.lr > 0:
            raise ValueError(f"parameter group {self.name!r}: lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the LLM's linear layers (peft), trained as the ``lora`` group (notebook 03)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        _freeze(self, "targets", tuple(self.targets))
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise ValueError(f"invalid LoRA spec {self}: r >= 1, alpha > 0, 0 <= dropout < 1, some targets")


@dataclass(frozen=True)
class TrainSpec:
    """What trains, and how: a recipe as data (notebook 03).

    ``groups``: the trained parameter groups with their learning rates; everything else is
    frozen. ``batch_size`` is per process and micro-step; one optimizer step sees
    ``batch_size * grad_accum * num_processes`` examples. ``length_bucket`` > 0 draws each batch
    from one bucket of that many words (:class:`vlkit.train.sampler.StepSampler`).
    ``mixed_precision``: ``"bf16"`` autocast (fp32 master weights), ``"no"``, or ``"auto"``:
    bf16 where the hardware computes it natively, resolved when the spec is made so that its
    key names the precision used. ``seed``: the training seed (data order and the
    initialisation of every new module), separate from the data, benchmark and backbone seeds.
    """

    groups: tuple[ParamGroup, ...]
    steps: int
    batch_size: int
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03           # LLaVA: 3% warm-up, then cosine decay
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"
    length_bucket: int = 0
    seed: int = 0
    lora: LoraSpec | None = None
    progress: bool = runtime(True)
    log_every: int = runtime(1)
    num_workers: int = runtime(0)

    def __post_init__(self):
        _freeze(self, "groups", tuple(self.groups))
        if not self.groups:
            raise ValueError("a TrainSpec must train at least one parameter group")
        names = [g.name for g in self.groups]
        if len(names) != len(set(names)):
            raise ValueError(f"parameter group names repeat: {names}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"steps, batch_size and grad_accum must be >= 1 (got {self.steps}, "
                             f"{self.batch_size}, {self.grad_accum})")
        if self.length_bucket < 0:
            raise ValueError(f"length_bucket is a bucket width >= 0 (0: off), got {self.length_bucket}")
        _known("mixed precision", self.mixed_precision, list(PRECISIONS))
        from vlkit.train.hardware import resolve_precision
        _freeze(self, "mixed_precision", resolve_precision(self.mixed_precision))
        if ("lora" in names) != (self.lora is not None):
            raise ValueError("a 'lora' parameter group and a LoraSpec go together: give both or neither")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_ratio * self.steps))

    def replace(self, **changes) -> "TrainSpec":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)
