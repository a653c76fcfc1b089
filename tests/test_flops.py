"""Analytic prefill FLOPs (vlkit.flops) against FlopCounterMode: tiny models, LLaVA-1.5-7B shapes (notebook 06)."""
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402
from _vltiny import one_thread  # noqa: E402,F401  (autouse: one torch thread in this module)

from vlkit.compression import Compressor  # noqa: E402
from vlkit.connectors import MLPConnector  # noqa: E402
from vlkit.eval.efficiency import prefill_flops as measured_flops  # noqa: E402
from vlkit.flops import (ConnectorCost, FastV, Keep, Stack, ToMe, llava_7b, prefill_flops,  # noqa: E402
                         reduction_for, shapes_of)
from vlkit.model import VLModel  # noqa: E402


def _batch(m, n_text=6):
    """One row: <bos>, the image's slots, then text; ``n_text`` counts every non-image token."""
    ids = torch.tensor([[1] + [m.config.image_token_id] * m.num_image_tokens + list(range(5, 4 + n_text))])
    size = m.config.vision_config.image_size
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, size, size), "attention_mask": torch.ones_like(ids)}


def _parts(m, b):
    """FlopCounterMode's count per top-level module; what runs in VLModel itself is the compressor's."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(**b)
    per = {name: sum(c.values()) for name, c in counter.get_flop_counts().items()}
    parts = {k: per.get(f"VLModel.{k}", 0) for k in ("vision_tower", "connector", "language_model")}
    parts["rest"] = per["VLModel"] - sum(parts.values())
    return parts


@pytest.fixture(scope="module")
def eager_module():
    """16 patches + [cls] through 3 tower layers, mlp2x_gelu with its own width, a 4-layer GQA Llama.

    Eager attention in both towers: CPU FlopCounterMode sees SDPA's fused kernel not at all (below).
    """
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                              num_attention_heads=2, image_size=32, patch_size=8))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(T.tokenizer()), hidden_size=64, intermediate_size=96,
                                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=128))
    return VLModel.from_backbones(vision, llm, T.tokenizer(), connector="mlp2x_gelu", connector_kwargs={"hidden": 48},
                                  llm_attn_implementation="eager", vision_attn_implementation="eager").eval()


@pytest.fixture
def eager(eager_module):
    yield eager_module
    eager_module.set_token_reduction("identity")


CASES = [("identity", {}), ("random", {"keep_ratio": 0.5}), ("pool", {"keep_ratio": 0.25}),
         ("tome", {"keep_ratio": 0.5}), ("tome", {"r": [3, 2]}), ("fastv", {"K": 1, "keep_ratio": 0.5}),
         ("vmtc", {"keep_ratio": 0.5}), ("visionzip", {"keep_ratio": 0.5}), ("prumerge", {"keep_ratio": 0.5})]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_analytic_count_is_flop_counters_count_exactly(eager, name, options):
    # exact, not within a tolerance: both count the same matmuls (the compressors' other ops are free in both)
    none = prefill_flops(**shapes_of(eager), n_text=6)
    eager.set_token_reduction(name, **options)
    b = _batch(eager)
    f = prefill_flops(**shapes_of(eager), n_text=6)
    assert measured_flops(eager, b) == f.total
    tome = isinstance(shapes_of(eager)["reduction"], ToMe)  # its similarity runs inside the tower
    assert _parts(eager, b) == {"vision_tower": f.vision + tome * f.compressor, "connector": f.connector,
                                "language_model": f.llm + f.lm_head, "rest": (not tome) * f.compressor}
    if name != "identity":
        assert f.total < none.total
    if name in ("tome", "vmtc", "visionzip", "prumerge"):
        assert f.compressor > 0


def test_the_last_position_logits_of_a_generation_prefill(eager):
    b = _batch(eager)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        eager(**b, logits_to_keep=1)
    f = prefill_flops(**shapes_of(eager), n_text=6, all_logits=False)
    assert counter.get_total_flops() == f.total and f.lm_head == 2 * 64 * len(T.tokenizer())


def test_cpu_flop_counter_misses_sdpa_attention():
    # the tiny VLM as built elsewhere runs SDPA in both towers; on CPU FlopCounterMode has no formula for
    # its fused kernel, so measured FLOPs lack exactly the attention products (eager models keep them)
    m = T.model().eval()
    f = prefill_flops(**shapes_of(m), n_text=6)
    assert f.attention > 0 and measured_flops(m, _batch(m)) == f.total - f.attention


# --- LLaVA-1.5-7B shapes -------------------------------------------------------------------------------

CLIP_L_336 = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14)
LLAMA_2_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32)


@pytest.fixture(scope="module")
def meta_7b():
    """The real transformers modules at 7B shapes on the meta device: shapes propagate, nothing is allocated."""
    with torch.device("meta"):
        vision, llm = CLIPVisionModel(CLIP_L_336), LlamaForCausalLM(LLAMA_2_7B)
        connector = MLPConnector(1024, 4096, has_cls=True)
    for tower in (vision, llm):
        tower.set_attn_implementation("eager")  # every attention product a visible matmul
    return vision, llm, connector


def _count(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _weights(module):
    """Parameters that multiply activations (linear and conv weights): 2 FLOPs each per token."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))


def test_llava_7b_is_built_from_its_configs():
    s = llava_7b()
    assert s["vision"] == Stack.from_config(CLIP_L_336) and s["llm"] == Stack.from_config(LLAMA_2_7B)
    assert (s["n_patches"], s["llm"].gated, s["vision"].gated, s["llm"].vocab) == (576, True, False, 32000)


@pytest.mark.parametrize("visual", [576, 288])
def test_llava_7b_parts_are_flop_counters_count_of_the_real_modules(meta_7b, visual):
    vision, llm, connector = meta_7b
    f = prefill_flops(**llava_7b(), n_text=100, reduction=Keep(visual))
    states = [torch.empty(1, 577, 1024, device="meta")] * 25
    assert _count(lambda: vision(pixel_values=torch.empty(1, 3, 336, 336, device="meta"))) == f.vision
    assert _count(lambda: connector(states)) == f.connector
    assert _count(lambda: llm(inputs_embeds=torch.empty(1, visual + 100, 4096, device="meta"))) == f.llm + f.lm_head


def test_llava_7b_total_is_two_flops_per_weight_per_token_plus_a_little_attention(meta_7b):
    vision, llm, connector = meta_7b
    f = prefill_flops(**llava_7b(), n_text=100)
    # nanoGPT's estimate, from the modules' own weights: every weight once per token it sees
    dense = 2 * (_weights(vision) * 577 + _weights(connector) * 576 + _weights(llm) * 676)
    assert f.total - f.attention == dense - 2 * 1024 * 3 * 14 ** 2  # the conv sees 576 patches, not 577 tokens
    assert dense < f.total < 1.05 * dense  # attention adds under 5% at ~680 tokens
    assert 9.0e12 < f.total < 10.0e12  # ~2 x 7e9 x 676 + the tower's ~0.38 TFLOPs
    assert 0.35e12 < f.vision < 0.40e12


def test_llava_7b_halving_the_visual_tokens_saves_the_predicted_share(meta_7b):
    _, llm, _ = meta_7b
    s = llava_7b()
    none, half = (prefill_flops(**s, n_text=100, reduction=r) for r in (None, Keep(288)))
    # predicted: 288 tokens fewer through every LLM weight, and the attention square shrinking 676 -> 388
    predicted = 2 * _weights(llm) * 288 + 32 * 4 * (676 ** 2 - 388 ** 2) * 4096
    assert none.total - half.total == predicted
    assert 0.40 < predicted / none.total < 0.42
    # FastV keeps the same tokens after layer K: it pays for K + 1 full-length layers more than connector-side
    layer = s["llm"].layer
    for k in (1, 2):
        assert prefill_flops(**s, n_text=100, reduction=FastV(k, 0.5)).total == half.total + (k + 1) * (
            layer(676) - layer(388))


# --- refusals -------------------------------------------------------------------------------------------


def test_what_it_cannot_count_is_an_error():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    cfg.model_type = "somethingnew"
    with pytest.raises(ValueError, match="gated"):
        Stack.from_config(cfg)
    assert Stack.from_config(cfg, gated=False).gated is False
    with pytest.raises(ValueError, match="ConnectorCost"):
        ConnectorCost.from_name("cmaa", 32, 64)
    s = llava_7b()

    class Custom(Compressor):
        name = "custom"

    with pytest.raises(ValueError, match="Keep"):
        reduction_for(Custom(4096), s["vision"], s["llm"], 576)
    with pytest.raises(ValueError, match="K=31"):
        prefill_flops(**s, n_text=100, reduction=FastV(31, 0.5))
