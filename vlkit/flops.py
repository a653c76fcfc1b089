"""Analytic prefill FLOPs of a vision-language model: tower, connector, compressor, LLM, LM head (notebook 06).

In the spirit of nanoGPT's ``estimate_mfu``: FLOPs from shapes alone, so a table can say what a token
budget saves at LLaVA-1.5-7B scale without loading 7B weights. It counts what PyTorch's
``FlopCounterMode`` counts (:func:`vlkit.eval.efficiency.prefill_flops`), so that the two agree
exactly on a real model (``tests/test_flops.py``):

- every matmul at 2 FLOPs per multiply-add: a linear layer over T tokens is 2·T·in·out (biases are
  not counted: ``FlopCounterMode`` counts ``addmm`` as its ``mm``);
- the attention products, QKᵀ and the weighted sum of V: 4·Tq·Tk·heads·head_dim, the full square
  whether causal or not (as ``FlopCounterMode`` counts them);
- the vision tower's patch-embedding convolution.

Not counted: norms, activations, softmax, residual adds, rotary embeddings, embedding lookups, and a
compressor's gathers, sorts, top-k and scatters; a compressor's cost is its matmuls only.

One caveat on the measured side: on CPU, ``FlopCounterMode`` (torch 2.13) has no formula for SDPA's
fused kernel (``_scaled_dot_product_flash_attention_for_cpu``), so a model running SDPA on CPU is
measured without its attention products; :attr:`Flops.attention` is that part (eager attention, and
SDPA on CUDA, are counted).

Counts are for one sequence holding one image (``n_text`` its other tokens); B rows of the same
length cost B times as much.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from vlkit.compression import Identity
from vlkit.compressors.base import split
from vlkit.compressors.fastv import FastV as FastVCompressor
from vlkit.compressors.fastv import kept_count
from vlkit.compressors.pool import Pool
from vlkit.compressors.prumerge import PruMerge
from vlkit.compressors.random_subset import RandomSubset
from vlkit.compressors.tome import ToMe as ToMeCompressor
from vlkit.compressors.visionzip import VisionZip
from vlkit.compressors.vmtc import VMTC

# which transformers model types have a gated (gate/up/down) MLP; another type must say so (gated=...)
_GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2", "granite"}
_PLAIN = {"clip_vision_model", "siglip_vision_model", "gpt2", "gpt_neox", "opt", "phi"}


@dataclass(frozen=True)
class Stack:
    """The shapes of a transformer stack: a vision tower or an LLM.

    ``kv_heads`` / ``head_dim``: 0 means ``heads`` / ``hidden // heads``. ``gated``: a gate/up/down
    MLP (Llama) rather than fc1/fc2 (CLIP). ``vocab``: the LM head's width (0: none, a tower).
    ``patch`` / ``channels``: a vision tower's patch-embedding convolution (0: none, an LLM).
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int = 0
    head_dim: int = 0
    gated: bool = False
    vocab: int = 0
    patch: int = 0
    channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "kv_heads", self.kv_heads or self.heads)
        object.__setattr__(self, "head_dim", self.head_dim or self.hidden // self.heads)

    @classmethod
    def from_config(cls, cfg, gated: bool | None = None) -> "Stack":
        """From a transformers config (``CLIPVisionConfig``, ``LlamaConfig`` or any with their fields).

        ``gated`` is known for common model types; another type must pass it, since a config does not
        say which MLP its model builds (Gemma's GELU MLP is gated, GPT-NeoX's is not).
        """
        kind = getattr(cfg, "model_type", "")
        if gated is None:
            if kind not in _GATED | _PLAIN:
                raise ValueError(f"vlkit.flops does not know whether a {kind!r} model's MLP is gated; "
                                 "pass gated=True (gate/up/down) or False (fc1/fc2)")
            gated = kind in _GATED
        return cls(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                   heads=cfg.num_attention_heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or 0,
                   head_dim=getattr(cfg, "head_dim", None) or 0, gated=gated,
                   vocab=getattr(cfg, "vocab_size", None) or 0, patch=getattr(cfg, "patch_size", None) or 0,
                   channels=getattr(cfg, "num_channels", None) or 3)

    def attention(self, tokens: int) -> int:
        """QKᵀ and the weighted sum of V over ``tokens`` queries and keys (every head, GQA or not)."""
        return 4 * tokens * tokens * self.heads * self.head_dim

    def layer(self, tokens: int, mlp_tokens: int | None = None) -> int:
        """One block: Q/K/V/O projections and attention over ``tokens``, the MLP over ``mlp_tokens``
        (default the same; ToMe merges between the two)."""
        mlp_tokens = tokens if mlp_tokens is None else mlp_tokens
        qkvo = 2 * tokens * self.hidden * 2 * (self.heads + self.kv_heads) * self.head_dim
        mlp = 2 * mlp_tokens * self.hidden * self.intermediate * (3 if self.gated else 2)
        return qkvo + self.attention(tokens) + mlp

    def embed(self, patches: int) -> int:
        """The patch-embedding convolution: a matmul of each patch's pixels with the kernel."""
        return 2 * patches * self.hidden * self.channels * self.patch ** 2


@dataclass(frozen=True)
class ConnectorCost:
    """A connector's matmul FLOPs per visual token it maps (``from_name`` for ``linear``, ``mlp2x_gelu``;
    for another connector, measure its per-token cost and pass it)."""

    per_token: int

    @classmethod
    def from_name(cls, name: str, vision_hidden: int, text_hidden: int, hidden: int | None = None) -> "ConnectorCost":
        if name == "linear":
            return cls(2 * vision_hidden * text_hidden)
        if name == "mlp2x_gelu":
            hidden = hidden or text_hidden
            return cls(2 * vision_hidden * hidden + 2 * hidden * text_hidden)
        raise ValueError(f"vlkit.flops counts connectors 'linear' and 'mlp2x_gelu', not {name!r}; "
                         "pass ConnectorCost(per_token=...) with its matmul FLOPs per visual token")


# --- reductions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keep:
    """Connector-side: the LLM sees ``tokens`` of the connector's visual tokens (every slot, padded
    ones too); ``cost``: the method's own matmul FLOPs (:func:`reduction_for` estimates them)."""

    tokens: int
    cost: int = 0


@dataclass(frozen=True)
class ToMe:
    """ToMe in the tower: ``merges[i]`` tokens merged in layer i, after its attention and before its MLP."""

    merges: tuple[int, ...]


@dataclass(frozen=True)
class FastV:
    """FastV dropping in the LLM: layers 0..K see every token, later ones ``keep_ratio`` of the visual ones.

    ``K`` is 0-based, as :class:`vlkit.compressors.fastv.FastV` (the paper's K=2 is ``K=1``). vlkit's FastV
    drops in plain prefills (all logits, no cache) only; generation and scoring mask instead, at the
    unreduced count.
    """

    K: int
    keep_ratio: float


@dataclass(frozen=True)
class Flops:
    """Prefill FLOPs by part; ``attention`` is the share of ``vision`` + ``llm`` spent on QKᵀ and AV."""

    vision: int
    connector: int
    compressor: int
    llm: int
    lm_head: int
    attention: int

    @property
    def total(self) -> int:
        return self.vision + self.connector + self.compressor + self.llm + self.lm_head

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def prefill_flops(vision: Stack, llm: Stack, connector: ConnectorCost, n_patches: int, n_text: int,
                  reduction: Keep | ToMe | FastV | None = None, cls: bool = True, all_logits: bool = True) -> Flops:
    """FLOPs of one prefill of ``n_text`` text tokens and one image of ``n_patches`` patches.

    The tower runs every layer on ``n_patches`` (+ [cls] when ``cls``, as CLIP; LLaVA's feature layer
    -2 leaves the last layer's output unread, but transformers still computes it, so it is counted).
    The connector maps the patches ([cls] dropped, as LLaVA), the LLM reads them with the text, and the
    LM head runs over every position (``all_logits``, what ``VLModel.forward`` computes) or over the
    last one (False: a generation prefill, which asks for one position's logits).

    ``reduction``: :class:`Keep` (connector-side: the LLM sees ``tokens``), :class:`ToMe` (each
    merging layer's attention sees the tokens before its merge, its MLP those after, and every later
    layer the merged ones; [cls] never merges; compressor: the bipartite similarity, half the tokens x
    the other half x one head's width, since ToMe averages the keys over heads) or :class:`FastV`
    (layers after K, and the LM head, see the kept visual tokens and the text; its ranking is no matmul).
    """
    merges = reduction.merges if isinstance(reduction, ToMe) else ()
    if len(merges) > vision.layers:
        raise ValueError(f"ToMe merges in {len(merges)} layers of a {vision.layers}-layer tower")
    t = n_patches + int(cls)
    tower, attention, compressor = vision.embed(n_patches), 0, 0
    for i in range(vision.layers):
        r = merges[i] if i < len(merges) else 0
        tower += vision.layer(t, t - r)
        attention += vision.attention(t)
        if r:
            compressor += 2 * ((t + 1) // 2) * (t // 2) * vision.head_dim  # side A (even) x side B (odd)
        t -= r
    visual = n_patches - sum(merges)
    conn = connector.per_token * visual
    if isinstance(reduction, Keep):
        visual, compressor = reduction.tokens, compressor + reduction.cost
    full = after = visual + n_text
    cut = llm.layers
    if isinstance(reduction, FastV):
        if not 0 <= reduction.K < llm.layers - 1:
            raise ValueError(f"fastv: K={reduction.K} leaves no layer to prune in a {llm.layers}-layer LLM")
        cut, after = reduction.K + 1, kept_count(visual, reduction.keep_ratio) + n_text
    lm = 0
    for i in range(llm.layers):
        tokens = full if i < cut else after
        lm += llm.layer(tokens)
        attention += llm.attention(tokens)
    head = 2 * (after if all_logits else 1) * llm.hidden * llm.vocab
    return Flops(vision=tower, connector=conn, compressor=compressor, llm=lm, lm_head=head, attention=attention)


# --- from a model or a compressor -------------------------------------------------------------------


def kmeans_flops(points: int, clusters: int, dim: int, iterations: int) -> int:
    """Spherical k-means' point x centre similarities: one product per iteration, one for the final labels."""
    return (iterations + 1) * 2 * points * clusters * dim


def reduction_for(compressor, vision: Stack, llm: Stack, n_patches: int, cls: bool = True,
                  feature_layer: int = -2) -> Keep | ToMe | FastV | None:
    """The reduction a (built, not necessarily attached) vlkit compressor makes, with its own matmuls.

    Compressor cost, matmuls only: ``vmtc`` its k-means on the connector's tokens (LLM width);
    ``visionzip`` and ``prumerge`` the feature layer's key projection they recompute (every tower token,
    [cls] included) and their key similarities (one head's width: keys averaged over heads):
    VisionZip's remaining tokens x contextual targets, PruMerge's all pairs (when ``neighbours`` > 0;
    its IQR rule keeps under a quarter of the tokens, so some are always left to absorb). ``pool``
    and ``random``: none. Another compressor is an error: pass a :class:`Keep` with its cost.
    """
    c, n = compressor, n_patches
    if isinstance(c, Identity):
        return None
    if isinstance(c, ToMeCompressor):
        merging = feature_layer % (vision.layers + 1)
        return ToMe(tuple(c.merges if c.merges is not None else c.schedule_merges(n + int(cls), merging, int(cls))))
    if isinstance(c, FastVCompressor):
        return FastV(c.K, c.keep_ratio)
    if isinstance(c, (Pool, RandomSubset)):
        return Keep(c.num_tokens(n))
    if not isinstance(c, (VMTC, VisionZip, PruMerge)):
        raise ValueError(f"vlkit.flops has no count for compressor {c.name!r}; pass Keep(tokens, cost) instead")
    keys = 2 * (n + int(cls)) * vision.hidden * vision.kv_heads * vision.head_dim
    m = c.num_tokens(n)
    if isinstance(c, VMTC):
        k, clusters = split(m, n, c.primary_fraction)
        return Keep(m, kmeans_flops(n - k, clusters, llm.hidden, c.iterations) if clusters else 0)
    if isinstance(c, VisionZip):
        k, contextual = split(m, n, c.dominant_fraction)
        return Keep(m, keys + 2 * (n - k) * contextual * vision.head_dim)
    return Keep(m, keys + (2 * n * n * vision.head_dim if c.neighbours else 0))  # PruMerge


def shapes_of(model) -> dict:
    """``prefill_flops`` arguments (all but ``n_text``) for a :class:`vlkit.model.VLModel` and its compressor.

    Refuses what it would count wrong: modules inserted into the towers, LoRA, a kept [cls].
    """
    cfg = model.config
    if cfg.insertions or any("lora_" in name for name, _ in model.named_modules()):
        raise ValueError("vlkit.flops does not count inserted modules or LoRA; this model has some")
    if cfg.keep_cls:
        raise ValueError("vlkit.flops counts connectors that drop [cls] (keep_cls=False), as LLaVA's")
    vision, llm = Stack.from_config(cfg.vision_config), Stack.from_config(cfg.text_config)
    connector = ConnectorCost.from_name(cfg.connector, vision.hidden, llm.hidden, cfg.connector_kwargs.get("hidden"))
    return {"vision": vision, "llm": llm, "connector": connector, "n_patches": model.num_patches,
            "cls": model.has_cls, "reduction": reduction_for(model.compressor, vision, llm, model.num_patches,
                                                             model.has_cls, cfg.vision_feature_layer)}


def llava_7b() -> dict:
    """``prefill_flops`` arguments (all but ``n_text``, ``reduction``) for LLaVA-1.5-7B.

    CLIP ViT-L/14 at 336 px (24 layers, 1024 wide, 4096 MLP, 16 heads; 576 patches + [cls]),
    ``mlp2x_gelu`` 1024 -> 4096 -> 4096, and Vicuna-7B v1.5, i.e. Llama-2-7B's shapes (32 layers,
    4096 wide, 11008 gated MLP, 32 heads, vocabulary 32000).
    """
    from transformers import CLIPVisionConfig, LlamaConfig
    vision = Stack.from_config(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                num_attention_heads=16, image_size=336, patch_size=14))
    llm = Stack.from_config(LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32))
    return {"vision": vision, "llm": llm, "connector": ConnectorCost.from_name("mlp2x_gelu", 1024, 4096),
            "n_patches": (336 // 14) ** 2, "cls": True}
