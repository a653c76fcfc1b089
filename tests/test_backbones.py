"""Tiny CLIP / Llama backbones: build, save, load like real checkpoints, train, probe (notebook 02)."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, CLIPModel,
                          CLIPVisionModel)

from vlkit import backbones as B
from vlkit.backbones import clip as BC, llm as BL, probes as BP  # what the notebooks do not call
from vlkit import world as W
from vlkit.tokenizer import train_tokenizer

TINY = dict(vocab_size=300, vision_width=32, vision_layers=2, vision_heads=2, text_width=32,
            text_layers=1, text_heads=2, projection_dim=32, llm_hidden=32, llm_layers=2,
            llm_heads=2, llm_intermediate=64, llm_block=32, clip_batch=16, llm_batch=8,
            clip_steps=12, llm_steps=12, clip_warmup=2, llm_warmup=2, text_scenes=40,
            text_val_scenes=10, probe_train=80, probe_test=40, log_every=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: one thread is as fast alone and far faster when other jobs share the CPU
    # (OpenMP threads of two processes spinning on 2 cores measured 10x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg():
    return B.BackboneConfig.for_profile("smoke", **TINY)


@pytest.fixture(scope="module")
def tok(cfg):
    return train_tokenizer(BL.corpus_texts(B.text_corpus(cfg, 40, stream=11)), vocab_size=300)


def test_config_profiles():
    assert B.BackboneConfig.for_profile("full").num_patches == 64
    with pytest.raises(ValueError, match="profile"):
        B.BackboneConfig.for_profile("huge")
    with pytest.raises(ValueError, match="multiple"):
        B.BackboneConfig(image_size=60, patch_size=8)


def test_vision_round_trip_through_from_pretrained(cfg, tok, tmp_path):
    clip = CLIPModel(BC.tiny_clip_config(cfg, tok)).eval()
    clip.save_pretrained(tmp_path / "clip")
    vision = BC.vision_from_clip(clip)
    vision.save_pretrained(tmp_path / "vision")
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    ref = clip.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    # the real-checkpoint code path, pointed at local folders: a vision folder and a full CLIP
    for path in (tmp_path / "vision", tmp_path / "clip", str(tmp_path / "vision")):
        tower = B.build_vision_tower(path)
        assert isinstance(tower, CLIPVisionModel)
        out = tower(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(out, ref)
    assert isinstance(CLIPVisionModel.from_pretrained(tmp_path / "vision"), CLIPVisionModel)
    fresh = B.build_vision_tower(None, config=clip.config.vision_config)
    assert isinstance(fresh, CLIPVisionModel)


def test_llm_round_trip_and_4bit(cfg, tok, tmp_path):
    llm = B.build_llm(None, config=BL.tiny_llm_config(cfg, tok)).eval()
    llm.save_pretrained(tmp_path / "llm")
    x = torch.randint(0, len(tok), (2, 12))
    loaded = B.build_llm(tmp_path / "llm").eval()
    torch.testing.assert_close(loaded(input_ids=x).logits, llm(input_ids=x).logits)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "llm")).__name__ == "LlamaForCausalLM"
    q = B.build_llm(tmp_path / "llm", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    assert any(type(m).__name__ == "Linear4bit" for m in q.modules())
    logits = q(input_ids=x).logits
    assert torch.isfinite(logits).all() and logits.shape == (2, 12, len(tok))


def test_mismatched_checkpoint_is_a_clear_error(cfg, tok, tmp_path):
    llm = B.build_llm(None, config=BL.tiny_llm_config(cfg, tok))
    llm.save_pretrained(tmp_path / "llm")
    conf = json.loads((tmp_path / "llm" / "config.json").read_text())
    conf["intermediate_size"] = conf["intermediate_size"] * 2  # weights no longer fit
    (tmp_path / "llm" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="do not match"):
        B.build_llm(tmp_path / "llm")
    vision = B.build_vision_tower(None, config=BC.tiny_clip_config(cfg, tok).vision_config)
    vision.save_pretrained(tmp_path / "vision")
    conf = json.loads((tmp_path / "vision" / "config.json").read_text())
    conf["num_hidden_layers"] += 1  # a layer without weights
    (tmp_path / "vision" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="do not match"):
        B.build_vision_tower(tmp_path / "vision")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        B.build_vision_tower(tmp_path / "empty")


def test_pixels_match_the_image_processor(cfg):
    scenes = W.sample_scenes(3, 0, cfg.world)
    proc = B.image_processor(cfg.image_size)
    for res in (cfg.image_size, 80):  # same size, and a resize + crop
        images = [W.render(s, res) for s in scenes]
        ref = proc(images=images, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(BC.pixels(images, cfg.image_size), ref, atol=1e-4, rtol=1e-4)


def test_patch_labels_name_the_object_under_each_patch(cfg):
    obj = W.WorldObject("circle", "red", "large", (0.0, 0.0, 0.5, 0.5))
    labels = BC.patch_labels(W.Scene("x", (obj,)), cfg.world, grid=4).view(4, 4)
    classes = BC.conjunction_classes(cfg.world)
    assert classes[labels[0, 0]] == "red circle" and classes[labels[1, 1]] == "red circle"
    assert labels[2:].eq(0).all() and labels[:, 2:].eq(0).all()


def test_training_reduces_losses(cfg, tok):
    clip, hist = BC.train_clip(cfg, tok, progress=False)
    first, last = hist[:3], hist[-3:]
    for key in ("contrastive", "dense"):
        assert sum(r[key] for r in last) < sum(r[key] for r in first)
    blocks = B.pack(B.corpus_ids(B.text_corpus(cfg, 40, stream=11), tok), cfg.llm_block)
    ppl0 = B.perplexity(B.build_llm(None, config=BL.tiny_llm_config(cfg, tok)), blocks[:8])
    llm, hist = BL.train_llm(cfg, tok, blocks, progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert B.perplexity(llm, blocks[:8]) < ppl0


def test_probe_recovers_a_known_binding():
    # Synthetic tokens: each position holds one object's (shape, colour) as two one-hots.
    # The colour of shape g is readable only by attending to the position holding shape g,
    # which the attentive probe can do and a mean-pooled linear probe cannot.
    g = torch.Generator().manual_seed(0)
    n, n_shapes, n_colors, positions = 600, 3, 4, 3

    def make(n):
        shape = torch.stack([torch.randperm(n_shapes, generator=g) for _ in range(n)])
        color = torch.randint(0, n_colors, (n, positions), generator=g)
        tok = torch.cat([F.one_hot(shape, n_shapes), F.one_hot(color, n_colors)], -1).float()
        group = torch.randint(0, n_shapes, (n,), generator=g)
        y = color[torch.arange(n), (shape == group[:, None]).float().argmax(1)]
        return tok + 0.05 * torch.randn(tok.shape, generator=g), group, y

    xtr, gtr, ytr = make(n)
    xte, gte, yte = make(400)
    attentive = BP.fit_probe(xtr, ytr, gtr, n_colors, n_shapes)
    assert (attentive(xte, gte) == yte).float().mean() > 0.95
    pooled = BP.fit_probe(xtr.mean(1), ytr, gtr, n_colors, n_shapes, attend=False)
    assert (pooled(xte.mean(1), gte) == yte).float().mean() < 0.8


def test_probe_items_skip_ambiguous_shapes():
    objs = (W.WorldObject("circle", "red", "small", (0, 0, .2, .2)),
            W.WorldObject("circle", "blue", "small", (.5, .5, .7, .7)),
            W.WorldObject("square", "green", "small", (.3, .3, .4, .4)))
    assert BP.probe_items([W.Scene("x", objs)]) == [(0, "square", "green")]


def test_the_llm_reads_each_conversation_after_its_scene_as_text(cfg, tok):
    # The answers must be readable from the document: an <image> slot the LLM never sees
    # filled taught it answer priors instead (README, "Where binding fails").
    from vlkit.tokens import IMAGE_TOKEN
    corpus = B.text_corpus(cfg, 5, stream=11)
    assert len(corpus["conversations"]) == len(corpus["contexts"]) == 5 * 3
    text = tok.decode(B.corpus_ids(corpus, tok))
    assert IMAGE_TOKEN not in text
    for i, (conv, context) in enumerate(zip(corpus["conversations"], corpus["contexts"])):
        rng = W.scene_rng(cfg.seed * 100 + 11, i // 3)
        scene = W.sample_scene(rng, cfg.world, W.scene_id(cfg.seed * 100 + 11, i // 3))
        assert context == W.symbolic_context(scene, rng).strip()
        assert all(f"{o.shape}: [" in context for o in scene.objects)  # what the teacher may ask about
        question = conv[0]["value"].removeprefix(f"{IMAGE_TOKEN}\n")
        assert f"{context}\n{question}" in text
        assert B.scene_as_text(conv, context)[1:] == conv[1:]
    # the tokenizer learns the VLM's language: captions and conversations, not the box lines
    assert all(context not in t for t in BL.corpus_texts(corpus))
    with pytest.raises(ValueError, match="image"):
        B.scene_as_text([{"from": "human", "value": "no image here"}], "a red circle")


def test_a_new_corpus_format_is_a_new_backbone_and_connector_key(cfg):
    import dataclasses

    from vlkit.cache import config_key
    from vlkit.recipes import llava
    lcfg = llava.LlavaConfig.for_profile("smoke")
    newer = dataclasses.replace(lcfg.backbones, corpus_format=lcfg.backbones.corpus_format + 1)
    assert config_key(newer) != config_key(lcfg.backbones)
    assert dataclasses.replace(lcfg, backbones=newer).stage1().key != lcfg.stage1().key
    assert B.BackboneConfig().corpus_format == B.CORPUS_FORMAT


def test_ensure_backbones_builds_loadable_checkpoints(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path))
    small = B.BackboneConfig.for_profile("smoke", **{**TINY, "clip_steps": 3, "llm_steps": 3})
    path = B.ensure_backbones(small, progress=False)
    assert path.parent == tmp_path / "smoke"
    metrics = B.load_metrics(path)
    for key in ("retrieval_recall_at_1", "probe_accuracy", "llm_perplexity"):
        assert metrics[key] == metrics[key]  # not NaN
    assert 0 <= metrics["probe_accuracy"] <= 1 and metrics["llm_perplexity"] > 1
    assert len(metrics["clip_history"]) == 3
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    assert isinstance(CLIPVisionModel.from_pretrained(path / "vision"), CLIPVisionModel)
    assert isinstance(CLIPModel.from_pretrained(path / "clip"), CLIPModel)
    assert AutoModelForCausalLM.from_pretrained(path / "llm").config.vocab_size == len(tok)
    assert (path / "vision" / "preprocessor_config.json").is_file()
    from vlkit import cache
    built, mtime = cache.BUILDS["backbones"], (path / "llm" / "model.safetensors").stat().st_mtime_ns
    assert B.ensure_backbones(small, progress=False) == path
    assert cache.BUILDS["backbones"] == built  # cached: no rebuild
    assert (path / "llm" / "model.safetensors").stat().st_mtime_ns == mtime


def test_plots_take_plain_data():
    import matplotlib
    matplotlib.use("Agg")
    from PIL import Image

    from vlkit.plots import backbones as P
    hist = [{"step": i, "contrastive": 3 - i / 10, "dense": 2 - i / 20, "loss": 5 - i / 5} for i in range(5)]
    assert P.loss_curves(hist, hist).axes
    probe = {"per_shape": {"circle": 0.9, "square": 0.8}, "accuracy": 0.85, "mean_pool_accuracy": 0.5,
             "chance_present": 0.4, "chance": 0.125}
    assert P.probe_results(probe).axes
    images = [Image.new("RGB", (16, 16)) for _ in range(6)]
    topk = [[i, (i + 1) % 6, (i + 2) % 6] for i in range(6)]
    assert P.retrieval_grid(images, [f"caption {i}" for i in range(6)], topk).axes


def test_siglip_towers_load_on_the_same_path(tmp_path):
    from transformers import SiglipConfig, SiglipModel, SiglipVisionModel
    conf = SiglipConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=100),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8))
    SiglipModel(conf).save_pretrained(tmp_path / "siglip")
    tower = B.build_vision_tower(tmp_path / "siglip")
    assert isinstance(tower, SiglipVisionModel)
    out = tower(pixel_values=torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert out.hidden_states[-2].shape == (1, 16, 32)  # SigLIP has no [cls]


class _FakeLM(torch.nn.Module):
    """A causal LM stand-in for :func:`context_lookup`: right after the prompt's "... is" it
    predicts the tokens of one colour word, one per position, either a fixed colour or the one
    the symbolic context gives the shape asked about (a perfect reader of the scene text).
    Every other position is uniform, so scoring the wrong positions loses the answer."""

    def __init__(self, tok, fixed=None):
        super().__init__()
        self.tok, self.fixed = tok, fixed
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask):
        import re
        from types import SimpleNamespace
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for i, row in enumerate(input_ids):
            row = row[attention_mask[i].bool()]
            text = self.tok.decode(row)
            shape = re.search(r"Which colour is the (\w+)\?", text).group(1)
            color = self.fixed or re.search(rf"(\w+) {shape}: \[", text).group(1)
            # the prompt ends at the last token whose prefix ends with "The <shape> is"
            end = max(j for j in range(len(row)) if self.tok.decode(row[: j + 1]).endswith(f"The {shape} is"))
            for k, t in enumerate(self.tok.encode(f" {color}", add_special_tokens=False)[: len(row) - end]):
                logits[i, end + k, t] = 10.0
        return SimpleNamespace(logits=logits)


def test_context_lookup_scores_each_colour_by_its_likelihood(cfg, tok):
    world = dataclasses.replace(cfg.world, max_objects=4)
    items = BP.lookup_items(world, 40, seed=0)
    assert items and all(k >= 2 for *_, k in items)
    perfect = B.context_lookup(_FakeLM(tok), tok, world, n_scenes=40, batch_size=7)
    assert perfect["accuracy"] == 1.0 and perfect["n"] == len(items)
    assert perfect["chance"] == 1 / len(world.colors)
    assert perfect["bag_of_attributes"] == pytest.approx(sum(1 / k for *_, k in items) / len(items))
    always_red = B.context_lookup(_FakeLM(tok, fixed="red"), tok, world, n_scenes=40)
    assert always_red["accuracy"] == pytest.approx(sum(c == "red" for _, _, c, _ in items) / len(items))
