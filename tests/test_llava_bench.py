"""LLaVA-Bench-style scoring: the rule judge checks facts; chat-judge replies; relative score."""
import json
import re

import pytest

from vlkit import world
from vlkit.benchmarks import llava_bench as lb

CONTEXT = """Two red circles and a blue square.
A blue square on the right.
Three shapes on a dark background.
A red circle in the top left corner.
A simple picture with red and blue shapes.

red circle: [0.050, 0.050, 0.250, 0.250]
red circle: [0.100, 0.700, 0.300, 0.900]
blue square: [0.700, 0.400, 0.950, 0.650]
"""


@pytest.mark.parametrize("text, ok, bad", [
    ("There are two red circles and one blue square.", {"2 red circle", "1 blue square"}, set()),
    ("There are three red circles.", set(), {"3 red circle"}),
    ("There are three objects.", {"3 object"}, set()),
    ("There is no green triangle.", {"0 green triangle"}, set()),
    ("I see a green triangle.", set(), {"there is a green triangle"}),
    ("The square is blue.", {"square is blue", "there is a square"}, set()),
    ("The square is red.", {"there is a square"}, {"square is red"}),
    ("The blue object is a square.", {"blue object is a square", "there is a blue object",
                                      "there is a square"}, set()),
    ("The blue square is on the right side.", {"there is a blue square", "blue square right"}, set()),
    ("The blue square is in the top left corner.", {"there is a blue square"}, {"blue square top left"}),
    ("In the top left corner there is a red circle.", {"there is a red circle", "red circle top left"}, set()),
    ("The blue square is to the right of the red circle.",
     {"there is a blue square", "blue square is to the right of the red circle"}, set()),
    ("The blue square is to the left of the red circle.", {"there is a blue square", "there is a red circle"},
     {"blue square is to the left of the red circle"}),
    ("Removing the blue square would leave two objects.", {"there is a blue square"}, set()),
])
def test_check_facts(text, ok, bad):
    got = lb.check_facts(CONTEXT, text)
    assert ok <= set(got.ok), got
    assert set(got.bad) == bad, got


def test_reference_beats_wrong_answer_and_hallucinated_count_lowers_score():
    judge = lb.RuleJudge()
    q, ref = "How many red circles are there?", "There are two red circles."
    right, ref_score = judge.score(CONTEXT, q, ref, ref)
    wrong, _ = judge.score(CONTEXT, q, "There are four red circles.", ref)
    assert ref_score == right == 10 and wrong < ref_score
    desc = "There are two red circles and a blue square. The blue square is on the right."
    halluc = desc + " There are also three green triangles."
    s_desc, _ = judge.score(CONTEXT, "Describe the image.", desc, desc)
    s_halluc, _ = judge.score(CONTEXT, "Describe the image.", halluc, desc)
    assert s_halluc < s_desc
    empty, _ = judge.score(CONTEXT, q, "", ref)
    assert empty == 1


def test_teacher_references_are_judged_true_and_corruptions_are_caught():
    """On the template teacher's own answers the judge finds no false fact; flip a colour and it does."""
    scenes = world.sample_scenes(60, seed=5, cfg=world.WorldConfig(min_objects=2, max_objects=4))
    recs = lb.make_questions(scenes, seed=5)
    assert {r["type"] for r in recs} == set(lb.TYPES)
    caught = total = 0
    for r in recs:
        assert lb.check_facts(r["context"], r["reference"]).bad == [], r
        colors = [c for c in world.COLORS if re.search(rf"\b{c}\b", r["reference"])]
        if colors:
            other = next(c for c in world.COLORS if c not in colors)
            flipped = re.sub(rf"\b{colors[0]}\b", other, r["reference"])
            total += 1
            caught += bool(lb.check_facts(r["context"], flipped).bad)
    assert total > 50 and caught / total > 0.8


def test_relative_score_arithmetic():
    js = [lb.Judgement("1", "conversation", 6, 8), lb.Judgement("2", "conversation", 8, 8),
          lb.Judgement("3", "detail", 5, 10), lb.Judgement("4", "reasoning", None, None)]
    s = lb.relative_scores(js)
    assert s["conversation"]["relative"] == pytest.approx(100 * 7 / 8)
    assert s["detail"]["relative"] == pytest.approx(50.0)
    assert s["overall"]["relative"] == pytest.approx(100 * (19 / 3) / (26 / 3))
    assert s["overall"]["n"] == 3 and s["malformed"] == 1 and "reasoning" not in s
    assert "conversation" in lb.format_relative(s)


@pytest.mark.parametrize("reply, expected", [
    ("8 7\nAssistant 1 was more accurate.", (8.0, 7.0)), ("8, 6.5", (8.0, 6.5)),
    ("\n  9/10 4/10\nbecause", (9.0, 4.0)), ("Assistant 1: 7 Assistant 2: 3", (7.0, 3.0)),
    ("Both answers are good.\n8 8", None), ("8", None), ("8 7 6", None), ("0 11", None), (None, None),
])
def test_parse_judge_reply(reply, expected):
    assert lb.parse_judge_reply(reply) == expected


def test_chat_judge_prompt_order_and_malformed_counted():
    seen = []
    replies = iter(["9 6\nreasons", "I cannot rate these."])

    class Client:  # what ChatJudge needs of a vlkit.chat_client.ChatClient
        def complete(self, messages, **params):
            seen.append(messages)
            assert params == {"temperature": 0.0}  # LLaVA's judge is asked at temperature 0
            return next(replies)

    judge = lb.ChatJudge(Client())
    recs = [dict(question_id=str(i), type="conv", context=CONTEXT, question="How many?",
                 answer="model says", reference="teacher says") for i in range(2)]
    js = lb.evaluate(recs, judge)
    user = seen[0][-1]["content"]
    assert user.index("[Context]") < user.index("[Question]") < user.index("[Assistant 1]\nteacher says") \
        < user.index("[Assistant 2]\nmodel says")
    assert (js[0].model, js[0].reference) == (6.0, 9.0)
    assert js[1].model is None and judge.n_malformed == 1
    assert lb.relative_scores(js)["malformed"] == 1


def test_load_bench_errors(tmp_path):
    q = tmp_path / "q.jsonl"
    a = tmp_path / "a.jsonl"
    q.write_text(json.dumps({"question_id": 1, "text": "How many?", "category": "conv", "context": CONTEXT,
                             "reference": "Three."}) + "\n")
    a.write_text(json.dumps({"question_id": 1, "text": "Three objects."}) + "\n")
    recs = lb.load_bench(q, a)
    assert recs[0]["type"] == "conversation" and recs[0]["reference"] == "Three."
    a.write_text(json.dumps({"question_id": 2, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="unknown question_id '2'"):
        lb.load_bench(q, a)
    q.write_text(json.dumps({"question_id": 1, "text": "?", "category": "poetry", "context": CONTEXT,
                             "reference": "r"}) + "\n")
    a.write_text(json.dumps({"question_id": 1, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="unknown type 'poetry'"):
        lb.load_bench(q, a)


# ------------------------------------------------------------------ ChatJudge through a real ChatClient (loopback)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the loopback servers of test_chat_teacher
from test_chat_teacher import SECRET, completion, json_reply, redirect_to, running_servers  # noqa: E402

from vlkit.chat_client import ChatClient, ChatClientError  # noqa: E402


@pytest.fixture
def loopback():
    """``loopback(respond)``: a recording server on 127.0.0.1 (test_chat_teacher.Recorder), shut down after."""
    with running_servers() as start:
        yield start


BENCH = [dict(question_id="1", type="conversation", context=CONTEXT, question="How many red circles?",
              answer="Two.", reference="There are two red circles.")]


@pytest.mark.parametrize("code", [302, 307])
def test_chat_judge_on_a_redirecting_endpoint_raises_and_sends_nothing_elsewhere(loopback, monkeypatch, code):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    other = loopback(json_reply(completion("9 9\nboth fine")))   # would score anything it got
    a = loopback(redirect_to(other.url + "/v1/chat/completions", code))
    judge = lb.ChatJudge(ChatClient(a.url + "/v1", "judge", timeout=5, max_retries=1, backoff=0.01))
    with pytest.raises(ChatClientError) as e:
        lb.evaluate(BENCH, judge)
    assert f"redirect to {other.url}/v1/chat/completions" in str(e.value) and SECRET not in str(e.value)
    assert other.requests == [] and judge.n_malformed == 0


@pytest.mark.parametrize("body", [b"[" * 100_000, b"[8, 6]", b'{"choices": [{"message": {"content": 8}}]}'])
def test_chat_judge_counts_an_out_of_schema_reply_as_malformed(loopback, monkeypatch, body):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    a = loopback(json_reply(body))
    client = ChatClient(a.url, "judge", timeout=5, max_retries=0)
    judge = lb.ChatJudge(client)
    js = lb.evaluate(BENCH, judge)
    assert (js[0].model, js[0].reference) == (None, None)
    assert judge.n_malformed == 1 == client.n_malformed and lb.relative_scores(js)["malformed"] == 1
