"""VisLingInstruct's parts (notebook 05): CMAA, IAS (batched = alone), rewriters, ICO."""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit.chat_client import ChatClient  # noqa: E402
from vlkit.ias import META_PROMPT, ias  # noqa: E402
from vlkit.ico import count_forward_passes, ico  # noqa: E402
from vlkit.rewriters import ChatRewriter, PoolParaphraser, SelfRewriter  # noqa: E402

IMAGES = [Image.new("RGB", (16, 16), c) for c in T.COLORS.values()][:3]
CANDIDATES = [["what color is the image?", "it is red.", "what color?"], ["what color is it?"],
              ["it is blue.", "what color is the image? it is white.", "is it green?", "color?"]]


def _trained_cmaa(seed=0):
    """A CMAA model whose attention term is non-zero (as after training)."""
    m = T.model(seed, connector="cmaa", connector_kwargs={"heads": 2}).eval()
    with torch.no_grad():
        m.connector.attn.out_proj.weight.normal_(std=0.5)
    return m


def test_cmaa_starts_as_the_linear_connector_and_then_reads_the_instruction():
    plain = T.model(0).eval()
    m = T.model(0, connector="cmaa", connector_kwargs={"heads": 2}).eval()
    m.connector.proj.load_state_dict(plain.connector.proj.state_dict())  # the linear connector's projection
    assert not m.connector.attn.out_proj.weight.any()
    b = T.processor(m).collate([T.ColorDataset(1)[0]])
    with torch.no_grad():
        torch.testing.assert_close(m(**b).logits, plain(**b).logits, rtol=0, atol=1e-6)
    m = _trained_cmaa()
    proc = T.processor(m)

    def visual(question):
        seen = []
        h = m.connector.register_forward_hook(lambda mod, i, o: seen.append(o.detach()))
        with torch.no_grad():
            m(**proc([[{"from": "human", "value": f"<image>\n{question}"}]], [IMAGES[0]], add_generation_prompt=True))
        h.remove()
        return seen[0]
    assert not torch.allclose(visual("what color is the image?"), visual("is it green?"))
    text_only = {"image": None, "conversations": [{"from": "human", "value": "what color is it? it is red."},
                                                  {"from": "gpt", "value": "red."}]}
    seen = []
    h = m.connector.register_forward_hook(lambda mod, i, o: seen.append(o.detach()))
    with torch.no_grad():  # a text-only example first, then an image example: each image reads its own text
        assert torch.isfinite(m(**proc.collate([text_only, T.ColorDataset(1)[0]])).loss)
        m(**proc.collate([T.ColorDataset(1)[0]]))
    h.remove()
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=1e-6)


def test_cmaa_refuses_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="heads=3 must be >= 1 and divide the LLM width 64"):
        T.model(connector="cmaa", connector_kwargs={"heads": 3})


@pytest.mark.parametrize("connector", ["linear", "cmaa"])
def test_ias_batched_equals_each_candidate_scored_alone(connector):
    m = _trained_cmaa() if connector == "cmaa" else T.model(0).eval()
    proc = T.processor(m)
    scores = ias(m, proc, IMAGES, CANDIDATES, batch_size=2)
    assert [len(s) for s in scores] == [len(c) for c in CANDIDATES]
    for img, cands, row in zip(IMAGES, CANDIDATES, scores):
        for cand, score in zip(cands, row):
            batch = proc([[{"from": "human", "value": f"<image>\n{META_PROMPT}"}, {"from": "gpt", "value": cand}]],
                         [img])
            labels = batch.pop("labels")
            with torch.no_grad():
                logp = torch.log_softmax(m(**batch).logits[0, :-1].float(), -1)
            target = labels[0, 1:]
            keep = target != -100
            mean_nll = -logp[keep].gather(-1, target[keep].unsqueeze(-1)).mean().item()
            assert score == pytest.approx(mean_nll, abs=1e-4)


def test_ias_bad_input_is_an_error_not_a_score():
    m = T.model(0).eval()
    proc = T.processor(m)
    with pytest.raises(ValueError, match="3 images but 2 lists"):
        ias(m, proc, IMAGES, CANDIDATES[:2])
    with pytest.raises(ValueError, match="image 1: an empty instruction"):
        ias(m, proc, IMAGES[:2], [["a"], ["  "]])
    with pytest.raises(ValueError, match="a list of candidates per image"):
        ias(m, proc, IMAGES[:1], ["what color?"])
    proc.max_length = 20
    with pytest.raises(ValueError, match="image 0: .* tokens do not fit the context of max_length=20"):
        ias(m, proc, IMAGES[:1], [["what color is the image? " * 4]])


def test_pool_paraphraser_fills_other_phrasings_deterministically():
    pool = ["is there a {obj}?", "do you see a {obj}?", "can you find a {obj} here?", "is a {obj} shown?"]
    p = PoolParaphraser(pool, n=2, seed=0)
    a = p("is there a red square?", key="q1", obj="red square")
    assert len(a) == 2 and "is there a red square?" not in a and all("red square" in x for x in a)
    assert a == PoolParaphraser(pool, n=2, seed=0)("is there a red square?", key="q1", obj="red square")
    with pytest.raises(ValueError, match="at least two distinct phrasings"):
        PoolParaphraser(["a", "a"])


class _Endpoint:
    """A loopback chat endpoint answering from a list (a string, or "sleep" to time out)."""

    def __init__(self, replies):
        self.replies, self.seen = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                reply = outer.replies.pop(0)
                if reply == "sleep":
                    threading.Event().wait(0.5)
                body = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except BrokenPipeError:
                    pass

            def log_message(self, *a):
                pass
        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"


def test_chat_rewriter_keeps_good_rewrites_and_counts_timeouts_and_garbage(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    ep = _Endpoint(["What colour is shown?", "", "word " * 80, "sleep", "what color?"])
    r = ChatRewriter(ChatClient(ep.url, "m", timeout=0.2, max_retries=0))
    assert r("what color?") == ["What colour is shown?"]
    assert r("what color?") == [] and r("what color?") == [] and r("what color?") == []  # empty, too long, timeout
    assert r("what color?") == []  # the original again is no rewrite
    assert r.n_failed == 4
    assert "what color?" in ep.seen[0]["messages"][0]["content"]
    ep.httpd.shutdown()


def test_ico_keeps_the_original_first_and_picks_among_the_candidates():
    m = T.model(0).eval()
    proc = T.processor(m)
    pool = ["what color is the image?", "what color?", "what color is it?"]
    with count_forward_passes(m) as n:
        out = ico(m, proc, IMAGES, ["what color?"] * 3, PoolParaphraser(pool, n=2), batch_size=2)
    # IAS and the comparison: each runs the 3 prompts once and the 3 x 3 candidates on their caches
    assert n[0] == 2 * (3 + 3 * 3)
    from vlkit.eval.scoring import continuation_scores
    from vlkit.ico import comparison_prompt
    for img, o in zip(IMAGES, out):
        assert o.candidates[0] == "what color?" and len(o.candidates) == 3
        assert o.ias == pytest.approx(ias(m, proc, [img], [o.candidates])[0], abs=1e-5)
        assert o.ias_pick == min(range(3), key=o.ias.__getitem__)
        letters = continuation_scores(m, proc, [comparison_prompt(o.candidates, o.ias)], [img], [["A.", "B.", "C."]])[0]
        assert o.ico_pick == max(range(3), key=lambda j: letters[j][0]) and o.instruction == o.candidates[o.ico_pick]
    blank = ico(m, proc, IMAGES[:1], ["what color?"], lambda inst, **kw: ["  ", "what color?"])
    assert blank[0].candidates == ["what color?"]  # blank rewrites and the original again are no candidates
    kept = ico(m, proc, IMAGES[:1], ["what color is it?"], lambda inst, **kw: [])  # a rewriter that failed
    assert kept[0].candidates == ["what color is it?"] and kept[0].instruction == "what color is it?"
    with pytest.raises(ValueError, match="an empty instruction"):
        ico(m, proc, IMAGES[:1], [""], lambda inst, **kw: [])


def test_self_rewriter_prompts_the_model_and_counts_unusable_replies(monkeypatch):
    import vlkit.eval.scoring as scoring
    seen = []

    def fake_generate(model, processor, prompts, images, **kw):
        seen.extend(prompts)
        return ["", "Name the colour of the image.", "what color?"]
    monkeypatch.setattr(scoring, "generate", fake_generate)
    r = SelfRewriter(None, None)
    assert r.many(["what color?"] * 3) == [[], ["Name the colour of the image."], []]
    assert r.n_failed == 2 and all("what color?" in p for p in seen)
