import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, CLIPModel, CLIPConfig

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit.llava_dataset import LlavaDataset  # noqa: E402
from vlkit.model import VLConfig, VLModel  # noqa: E402
from vlkit.processor import VLProcessor  # noqa: E402


def _batch(m, n=2):
    ds = T.ColorDataset(n)
    return T.processor(m).collate([ds[i] for i in range(n)])


def test_forward_loss_only_on_assistant_tokens():
    m = T.model()
    b = _batch(m)
    assert m.num_image_tokens == 4  # (16 / 8)^2 patches, [cls] dropped
    assert int((b["input_ids"] == m.config.image_token_id).sum()) == 2 * 4
    lab = b["labels"][0]
    text = T.tokenizer().decode(lab[lab != -100])
    assert text == "it is red.</s>"
    out = m(**b)
    assert out.logits.shape[:2] == b["input_ids"].shape and torch.isfinite(out.loss)
    # the loss is the LLM's loss on exactly those labels: changing a prompt-only label has no effect
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten())
    torch.testing.assert_close(out.loss, manual)
    # the image matters
    b2 = dict(b, pixel_values=b["pixel_values"].flip(0))
    assert not torch.allclose(m(**b2).logits, out.logits)


def test_mlp_connector_keep_cls_and_layer():
    m = T.model(connector="mlp2x_gelu", keep_cls=True, vision_feature_layer=-1)
    assert m.num_image_tokens == 5 and m.config.connector == "mlp2x_gelu"
    assert torch.isfinite(m(**_batch(m)).loss)


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_identical(tmp_path, tie):
    m = T.model(tie=tie, connector="mlp2x_gelu").eval()
    b = _batch(m)
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "vlkit" and cfg["connector"] == "mlp2x_gelu"
    for cls in (VLModel, AutoModel, AutoModelForImageTextToText):
        m2 = cls.from_pretrained(tmp_path)
        assert type(m2) is VLModel
        assert torch.equal(m(**b).logits, m2(**b).logits)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VLConfig)
    p = T.processor(m)
    gen = p.prompt(["what color is the image?"] * 2, [Image.new("RGB", (16, 16), (255, 0, 0))] * 2)
    g1 = m.generate(**gen, max_new_tokens=4, do_sample=False)
    g2 = m2.generate(**gen, max_new_tokens=4, do_sample=False)
    assert g1.shape == (2, 4) and torch.equal(g1, g2)
    p.save_pretrained(tmp_path / "proc")
    p2 = VLProcessor.from_pretrained(tmp_path / "proc")
    assert torch.equal(p2.prompt(["hi"])["input_ids"], p.prompt(["hi"])["input_ids"])


def test_generate_left_padding_matches_single():
    m = T.model().eval()
    p = T.processor(m)
    img = Image.new("RGB", (16, 16), (0, 0, 255))
    batch = p.prompt(["what color is the image?", "what?"], [img, img])
    single = p.prompt(["what?"], [img])
    gb = m.generate(**batch, max_new_tokens=3, do_sample=False)
    gs = m.generate(**single, max_new_tokens=3, do_sample=False)
    assert torch.equal(gb[1], gs[0])


def test_checkpoint_shape_mismatch_is_clear(tmp_path):
    m = T.model()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"does not match its config .*mlp.*\(64, 128\) vs config \(64, 96\)"):
        VLModel.from_pretrained(tmp_path)


def test_tokenizer_without_image_token_is_rejected():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "a": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>")
    vision, llm = T.backbones()
    with pytest.raises(ValueError, match="<image>"):
        VLModel.from_backbones(vision, llm, tok)


def test_image_count_mismatch_is_clear():
    m = T.model()
    b = _batch(m)
    with pytest.raises(ValueError, match="8 image-token slots .* 1 images"):
        m(**dict(b, pixel_values=b["pixel_values"][:1]))
    p = T.processor(m)
    conv = T.ColorDataset(1)[0]["conversations"]
    with pytest.raises(ValueError, match="example 0 has 1 <image> tag.* 0 image"):
        p([conv], [None])


def test_a_cut_that_drops_every_answer_token_is_refused():
    m = T.model()
    conv = T.ColorDataset(1)[0]["conversations"]
    ids, labels = T.processor(m).encode(conv, 1)
    answer_at = next(i for i, t in enumerate(labels) if t != -100)
    # cutting inside the answer keeps what fits (LLaVA's truncation) ...
    p = VLProcessor(T.processor(m).image_processor, T.tokenizer(), m.num_image_tokens, max_length=answer_at + 1)
    assert p.encode(conv, 1)[1][-1] == labels[answer_at]
    # ... but a cut before it would leave an example that teaches nothing and scores nothing
    p.max_length = answer_at
    with pytest.raises(ValueError, match="cut every answer token.*raise max_length"):
        p.encode(conv, 1)


def test_unknown_connector_in_config():
    vision, llm = T.backbones()
    with pytest.raises(ValueError, match="unknown connector 'nope'"):
        VLModel.from_backbones(vision, llm, T.tokenizer(), connector="nope")


def test_from_backbones_accepts_paths_and_full_clip(tmp_path):
    vision, llm = T.backbones()
    clip = CLIPModel(CLIPConfig(vision_config=vision.config.to_dict(),
                                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=50)))
    clip.save_pretrained(tmp_path / "clip")
    llm.save_pretrained(tmp_path / "llm")
    m = VLModel.from_backbones(str(tmp_path / "clip"), tmp_path / "llm", T.tokenizer())
    tower = getattr(m.vision_tower, "vision_model", m.vision_tower)
    assert torch.equal(tower.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight)
    assert torch.equal(m.language_model.lm_head.weight, llm.lm_head.weight)


def test_llava_dataset_reads_folder(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "images" / "a.png")
    recs = [{"id": "a", "image": "images/a.png", "type": "detail",
             "conversations": [{"from": "human", "value": "<image>\nwhat color is the image?"},
                               {"from": "gpt", "value": "it is green."}]},
            {"id": "b", "image": "a.png", "type": "conversation",  # LLaVA style: relative to images/
             "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "green"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(recs))
    ds = LlavaDataset(tmp_path / "llava.json")
    assert len(ds) == 2 and ds[1]["image"].getpixel((0, 0)) == (0, 255, 0)
    assert len(LlavaDataset(tmp_path / "llava.json", types=["detail"])) == 1
    m = T.model()
    assert torch.isfinite(m(**T.processor(m).collate([ds[0], ds[1]])).loss)
    recs[0]["image"] = "images/missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(recs))
    with pytest.raises(FileNotFoundError, match="record 0 .*missing.png"):
        LlavaDataset(tmp_path / "bad.json")[0]


def test_text_reading_connector_and_importance_compressor_plug_in(tmp_path):
    """Later notebooks' shapes of plug-in (CMAA reads text; VMTC wants importance) need no model change."""
    from vlkit.compression import Compressor, register_compressor
    from vlkit.connectors import Connector, register_connector

    @register_connector("test_text_queries")
    class TextQueries(Connector):
        uses_text = True

        def __init__(self, vision_hidden, text_hidden, **kw):
            super().__init__(vision_hidden, text_hidden, **kw)
            self.proj = torch.nn.Linear(vision_hidden, text_hidden)

        def forward(self, hidden_states, text_embeds=None, text_mask=None):
            q = self.proj(self.features(hidden_states))
            att = (q @ text_embeds.transpose(1, 2)).masked_fill(~text_mask[:, None, :], float("-inf"))
            return q + att.softmax(-1) @ text_embeds

    @register_compressor("test_topk")
    class TopK(Compressor):
        needs_importance = True

        def __init__(self, dim, keep=2):
            super().__init__(dim)
            self.keep = keep

        def num_tokens(self, n):
            return self.keep

        def forward(self, tokens, importance=None):
            assert importance is not None and importance.shape == tokens.shape[:2]
            idx = importance.topk(self.keep, dim=1).indices.sort(1).values
            return tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))

    m = T.model(connector="test_text_queries", compressor="test_topk", compressor_kwargs={"keep": 2}).eval()
    assert m.num_image_tokens == 2 and m.vision_tower.config._attn_implementation == "eager"
    b = _batch(m)
    assert int((b["input_ids"] == m.config.image_token_id).sum()) == 4
    out = m(**b)
    assert torch.isfinite(out.loss)
    # the text now changes the visual tokens: same image, different question -> different image embeds
    p = T.processor(m)
    img = T.ColorDataset(1)[0]["image"]
    vis = []
    for q in ("what color is the image?", "what is it?"):
        g = p.prompt([q], [img])
        e = m.embed(g["input_ids"], g["pixel_values"], g["attention_mask"])
        vis.append(e[g["input_ids"] == m.config.image_token_id])
    assert vis[0].shape == (2, 64) and not torch.allclose(vis[0], vis[1])
    m.save_pretrained(tmp_path)
    assert torch.equal(VLModel.from_pretrained(tmp_path).eval()(**b).logits, out.logits)


def test_build_model_from_checkpoint_paths_seeds_only_the_new_modules(tmp_path):
    from vlkit.build import build_model
    from vlkit.specs import ModelSpec

    vision, llm = T.backbones()
    T.tokenizer().save_pretrained(tmp_path / "tokenizer")
    vision.save_pretrained(tmp_path / "vision")
    T.image_processor().save_pretrained(tmp_path / "vision")
    llm.save_pretrained(tmp_path / "llm")
    spec = ModelSpec(vision=str(tmp_path / "vision"), llm=str(tmp_path / "llm"), tokenizer=str(tmp_path / "tokenizer"),
                     connector="mlp2x_gelu")
    m, p = build_model(spec, seed=0)
    assert p.num_image_tokens == m.num_image_tokens == 4
    assert torch.isfinite(m(**p.collate([T.ColorDataset(2)[i] for i in range(2)])).loss)
    again, _ = build_model(spec, seed=0)
    other, _ = build_model(spec, seed=1)
    assert torch.equal(again.connector.fc1.weight, m.connector.fc1.weight)
    assert not torch.equal(other.connector.fc1.weight, m.connector.fc1.weight)
    assert torch.equal(other.language_model.lm_head.weight, m.language_model.lm_head.weight)  # loaded, not seeded
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model(spec.replace(llm=str(tmp_path / "tokenizer")))


@pytest.mark.parametrize("chat_template", ["{% for m in messages %}{{ m['content'] }}{% endfor %}", None])
def test_a_tokenizer_without_generation_markers_gets_llavas_template_and_trains(tmp_path, chat_template):
    import copy

    from vlkit.specs import ParamGroup, TrainSpec
    from vlkit.train import train
    tok = copy.deepcopy(T.tokenizer())
    tok.chat_template = chat_template  # a real Llama / Vicuna tokenizer: no {% generation %} blocks, or none at all
    with pytest.raises(ValueError, match="marks no assistant tokens.*vicuna_v1"):
        VLProcessor(T.image_processor(), tok, 4, template="tokenizer")
    p = VLProcessor(T.image_processor(), tok, 4)
    assert p.template == "vicuna_v1"
    b = p.collate([T.ColorDataset(1)[0]])
    ids, labels = b["input_ids"][0], b["labels"][0]
    assert tok.decode(ids[labels != -100]).strip() == "it is red.</s>"  # the answer and its </s>, nothing else
    text = tok.decode(ids[ids != p.image_token_id])
    assert text.startswith("A chat between a curious user") and "USER: \nwhat color is the image? ASSISTANT:" in text
    prompt = p.prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    assert tok.decode(prompt["input_ids"][0]).endswith("what color is the image? ASSISTANT:")
    p.save_pretrained(tmp_path / "p")
    assert VLProcessor.from_pretrained(tmp_path / "p").template == "vicuna_v1"
    m = T.model()
    p = VLProcessor.for_model(m, T.image_processor(), tok)
    r = train(m, T.ColorDataset(16), TrainSpec(groups=(ParamGroup("connector", 1e-2), ParamGroup("llm", 1e-3)),
                                               steps=8, batch_size=4, mixed_precision="no", progress=False),
              processor=p)
    assert r.losses[-1] < r.losses[0]
    with pytest.raises(ValueError, match="unknown conversation template 'alpaca'"):
        VLProcessor(T.image_processor(), tok, 4, template="alpaca")
