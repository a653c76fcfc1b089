"""The Bottleneck Adapter (notebook 04): identity at initialisation, group-wise up-projection, folded into
the next layers exactly, and the [cls]-every-k connector with its neck."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit.adapters import BottleneckAdapter  # noqa: E402
from vlkit.model import VLModel  # noqa: E402
from vlkit.reparam import merge_adapters  # noqa: E402


def adapters(rank=4, groups=2, towers=("llm", "vision"), places=("attention",), **options):
    """Bottleneck adapters in every LLM block, and in the vision blocks that feed the tiny model's connector
    (it reads the penultimate of 2 layers: block 0)."""
    out = []
    for tower in towers:
        out.append({"name": "bottleneck", "towers": [tower], "places": list(places),
                    "layers": [0] if tower == "vision" else None, "options": {"rank": rank, "groups": groups, **options}})
    return out


def _batch(m, n=3):
    ds = T.ColorDataset(n)
    items = [ds[i] for i in range(n)]
    items[-1] = {**items[-1], "image": None, "conversations": [  # a text-only problem in the same batch
        {"from": "human", "value": "what color is red?"}, {"from": "gpt", "value": "it is red."}]}
    return T.processor(m).collate(items)


def _randomise(model):
    with torch.no_grad():
        for a in model.inserted.values():
            a.up.weight.normal_(std=0.3)
            a.up.bias.normal_(std=0.3)
            a.down.bias.normal_(std=0.3)


def test_adapters_leave_the_model_unchanged_at_initialisation():
    plain, adapted = T.model().eval(), T.model(insertions=adapters(places=("attention", "mlp"))).eval()
    b = _batch(plain)
    torch.testing.assert_close(adapted(**b).logits, plain(**b).logits, rtol=0, atol=0)
    assert all(isinstance(a, BottleneckAdapter) for a in adapted.inserted.values())


def test_the_up_projection_is_group_wise():
    a = BottleneckAdapter(64, rank=8, groups=4)
    assert a.up.weight.shape == (64, 2, 1)  # each output sees rank / groups = 2 bottleneck features
    assert sum(p.numel() for p in a.parameters()) == (64 * 8 + 8) + (64 * 8 // 4 + 64)
    with torch.no_grad():
        a.up.weight.normal_()
    dense = a.up_matrix()
    assert (dense != 0).sum() == 64 * 2  # block diagonal
    x = torch.randn(3, 5, 64)
    a.eval()
    ref = x + a.up(a.down(x).transpose(-1, -2)).transpose(-1, -2)
    torch.testing.assert_close(a(x), ref)
    A, c = a.affine()
    torch.testing.assert_close(x @ A.T + c, a(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), "rank=0 must be an integer >= 1"),
    (dict(rank=6, groups=4), "groups=4 must be >= 1 and divide both rank=6"),
    (dict(rank=8, groups=3), "divide both rank=8 and the width dim=64"),
    (dict(activation="tanh"), "unknown activation 'tanh'"),
])
def test_bad_adapter_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BottleneckAdapter(64, **kwargs)


@pytest.mark.parametrize("places", [("attention",), ("attention", "mlp")])
def test_merged_adapters_give_the_same_logits_with_a_stock_llm(tmp_path, places):
    from transformers import AutoModelForCausalLM
    m = T.model(insertions=adapters(places=places)).eval()
    _randomise(m)
    b = _batch(m)
    ref = m(**b).logits
    merged = merge_adapters(m)
    assert len(merged.inserted) == 0 and merged.config.insertions == []
    torch.testing.assert_close(merged(**b).logits, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(T.model().eval()(**b).logits, ref)  # the adapters did change the model
    assert len(m.inserted) > 0 and torch.equal(m(**b).logits, ref)  # the original is untouched
    merged.language_model.save_pretrained(tmp_path / "llm")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "llm").eval()
    assert type(stock).__name__ == "LlamaForCausalLM" and stock.config.attention_bias
    embeds = merged.embed(b["input_ids"], b["pixel_values"])
    torch.testing.assert_close(stock(inputs_embeds=embeds, attention_mask=b["attention_mask"]).logits, ref,
                               rtol=1e-4, atol=1e-4)
    merged.save_pretrained(tmp_path / "vlm")
    torch.testing.assert_close(VLModel.from_pretrained(tmp_path / "vlm").eval()(**b).logits, ref, rtol=1e-4, atol=1e-4)


def test_a_non_linear_adapter_cannot_be_merged():
    m = T.model(insertions=adapters(activation="gelu"))
    with pytest.raises(ValueError, match="non-linearity cannot be folded"):
        merge_adapters(m)


def test_cls_every_k_reads_the_cls_tokens_through_the_neck_and_trains_with_text_only_problems():
    from vlkit.specs import ParamGroup, TrainSpec
    from vlkit.train import train
    m = T.model(connector="cls_every_k", connector_kwargs={"k": 1, "neck": 16},
                insertions=[{**adapters()[0], "towers": ["llm", "vision"]}])
    assert m.num_image_tokens == 2 and m.connector.layers == (1, 2)  # the tiny tower has 2 layers
    assert T.model(connector="cls_every_k", connector_kwargs={"k": 2}).num_image_tokens == 1
    b = _batch(m)
    assert torch.isfinite(m(**b).loss)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    spec = TrainSpec(groups=(ParamGroup("connector", 1e-2), ParamGroup("insertions", 1e-2)), steps=4, batch_size=4,
                     mixed_precision="no", progress=False)
    train(m, T.ColorDataset(8), spec, processor=T.processor(m))
    changed = {n.split(".")[0] for n, p in m.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"connector", "inserted"}
    vision_adapters = [n for n, p in m.named_parameters() if n.startswith("inserted.vision") and
                       not torch.equal(before[n], p)]
    assert vision_adapters  # gradients reached the vision tower's adapters through the LLM


@pytest.mark.parametrize("k,message", [(3, "k=3 must be between 1 and the tower's depth 2"), (0, "k=0")])
def test_cls_every_k_refuses_k_beyond_the_depth(k, message):
    with pytest.raises(ValueError, match=message):
        T.model(connector="cls_every_k", connector_kwargs={"k": k})


def test_the_recipe_builds_its_rows_as_specs():
    from vlkit.recipes import bottleneck as BA
    cfg = BA.BottleneckConfig.for_profile("full")
    main = cfg.stage(BA.MAIN, seed=1, lr=3e-3)
    assert [(g.name, g.lr) for g in main.train.groups] == [("connector", 3e-3), ("insertions", 3e-3)]
    assert main.model.connector == "cls_every_k" and [s.towers for s in main.model.insertions] == [("llm",), ("vision",)]
    assert main.train.steps == cfg.llava.stage2_steps and main.train.seed == 1 and main.init is None
    modular = cfg.stage(next(v for v in BA.ABLATIONS if v.recipe == "modular"))
    assert [g.name for g in modular.init.train.groups] == ["connector"] and [g.name for g in modular.train.groups] == [
        "insertions"]
    assert modular.init.train.steps + modular.train.steps == cfg.llava.stage2_steps
    lora = cfg.stage(BA.LORA, lr=6e-3)
    assert [s.towers for s in lora.model.insertions] == [("vision",)] and lora.train.lora.targets == ("q_proj", "v_proj")
    assert [(g.name, g.lr) for g in lora.train.groups] == [("connector", cfg.lr), ("insertions", cfg.lr), ("lora", 6e-3)]
    # notebook 03's patch connector reads the penultimate layer: no adapter in the last vision block
    patch = cfg.model_spec(next(v for v in BA.ABLATIONS if v.connector == "linear"))
    assert [(s.towers, s.layers) for s in patch.insertions] == [(("llm",), None), (("vision",), (0, 1, 2))]
    assert cfg.stage(BA.QLORA).model.llm_quantization == "nf4"
    assert cfg.model_spec(BA.ABLATIONS[2]).insertions[0].options["rank"] == cfg.rank // 2
    rows = BA.rows(cfg, [0, 1, 2], 9e-3, 2e-3)
    assert len(rows) == 3 * 3 + len(BA.ABLATIONS) + 1 and all(r.evaluation.spec.bench is None for r in rows)
    assert sum(r.evaluation.spec.blind for r in rows) == 9
    assert {r.evaluation.spec.split for r in BA.sweep_rows(cfg, 0)} == {"val"}
    with pytest.raises(ValueError, match="recipe must be one of"):
        BA.Variant("x", recipe="adapter")


def test_vision_adapters_after_the_connectors_last_layer_are_refused():
    with pytest.raises(ValueError, match=r"vision blocks \[1\] come after the last layer the connector reads"):
        T.model(insertions=[{**adapters(towers=("vision",))[0], "layers": None}])  # it reads hidden state 1 of 2
    m = T.model(insertions=adapters(towers=("vision",)))
    assert list(m.inserted) == ["vision_0_attention"]


def test_a_saved_adapter_model_reloads_in_a_fresh_process(tmp_path):
    import subprocess
    from vlkit.build import _insertion_dict
    from vlkit.specs import InsertionSpec
    spec = _insertion_dict(InsertionSpec("bottleneck", towers=("llm",), options={"rank": 4}))
    assert spec["module"] == "vlkit.adapters"
    m = T.model(insertions=[spec]).eval()
    _randomise(m)
    m.save_pretrained(tmp_path / "m")
    b = _batch(m)
    torch.save({k: v for k, v in b.items()}, tmp_path / "batch.pt")
    torch.save(m(**b).logits, tmp_path / "logits.pt")
    code = ("import torch, sys; from vlkit.model import VLModel; import vlkit.insertions as I; "
            "assert 'bottleneck' not in I.INSERTIONS.names(); "
            f"m = VLModel.from_pretrained({str(tmp_path / 'm')!r}).eval(); "
            f"b = torch.load({str(tmp_path / 'batch.pt')!r}); "
            f"torch.testing.assert_close(m(**b).logits, torch.load({str(tmp_path / 'logits.pt')!r})); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
