"""LLaVA-Bench-style relative score: a judge compares a model's answer with the teacher's (notebook 03).

LLaVA asks a text-only GPT-4 to read the symbolic context of an image (captions + boxes), the
question, the reference answer (GPT-4's own, "Assistant 1") and the model's ("Assistant 2"),
and to give each a score from 1 to 10. The reported number is the *relative score*:
mean(model) / mean(reference) x 100, per question type and overall (85.1% in the paper).

Two judges share one interface, ``judge.score(context, question, answer, reference) ->
(model_score, reference_score)`` or None for a reply that could not be read:

- :class:`RuleJudge` (default): offline and deterministic. It extracts the checkable facts an
  answer states -- counts ("two red circles"), which objects exist, colours of objects
  ("the circle is red"), absolute positions ("in the top left corner"), relative positions
  ("to the left of the blue square"), size comparisons -- and checks each against the parsed
  context. Correct facts raise the score, contradicted or hallucinated ones lower it.
- :class:`ChatJudge`: an OpenAI-compatible chat endpoint (a :class:`vlkit.chat_client.ChatClient`,
  e.g. the chat teacher's) prompted in LLaVA's judge format; a reply whose first line is not two
  scores is counted as malformed, never scored.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from vlkit.english import pluralize, position_phrase
from vlkit.jsonl import read_jsonl
from vlkit.teacher import COLOR_WORDS, parse_context
from vlkit.tokens import IMAGE_TOKEN

TYPES = ("conversation", "detail", "reasoning")
# LLaVA-Bench's own category names -> ours.
TYPE_ALIASES = {"conv": "conversation", "conversation": "conversation", "detail": "detail",
                "complex": "reasoning", "reasoning": "reasoning"}

# ---------------------------------------------------------------------------------------------
# The rule-based judge
# ---------------------------------------------------------------------------------------------

_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_NUMBERS["no"] = 0
_GENERIC = {"object", "shape", "thing", "item"}  # nouns that match every object
_SIZES = {"small", "medium", "sized", "large", "big", "tiny", "little", "huge"}
_NEGATIONS = {"no", "not", "none", "never", "without", "isn", "aren"}
_STOP = set("a an the is are was were be of in on at to and or it its this that there image picture "
            "with as by for from so which what how".split())


def _words(text: str) -> list[str]:
    """Lower-case words, digits and sentence ends (``.``) as tokens."""
    return re.findall(r"[a-z]+|\d+(?:\.\d+)?|[.!?;]", text.lower().replace("colour", "color"))


@dataclass
class _Mention:
    start: int
    end: int            # token span [start, end)
    color: str | None
    kind: str           # "circle", "traffic light", or a generic noun ("object")
    plural: bool


@dataclass
class FactCheck:
    """The facts found in one answer: ``ok`` (true of the context) and ``bad`` (false)."""
    ok: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


class _Facts:
    """The context as sets a fact can be checked against."""

    def __init__(self, context: str):
        ctx = parse_context(context, "judge context")
        self.objs = []
        for cat, box in ctx.objects:
            words = cat.split()
            colors = [w for w in words if w in COLOR_WORDS]
            kind = " ".join(w for w in words if w not in COLOR_WORDS) or words[-1]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            area = (box[2] - box[0]) * (box[3] - box[1])
            self.objs.append(dict(color=colors[0] if colors else None, kind=kind, cx=cx, cy=cy, area=area))
        kinds = {o["kind"] for o in self.objs}
        try:  # our world's shapes are known even when absent: naming one absent is a hallucination
            from vlkit.world import SHAPES
            kinds |= set(SHAPES)
        except ImportError:  # pragma: no cover
            pass
        # Longest first, so "traffic light" wins over "light".
        self.kinds = sorted(kinds | _GENERIC, key=lambda k: -len(k.split()))
        self.forms = {}
        for k in self.kinds:
            self.forms[tuple(k.split())] = (k, False)
            self.forms[tuple(pluralize(k).split())] = (k, True)

    def match(self, m: _Mention) -> list[dict]:
        return [o for o in self.objs
                if (m.kind in _GENERIC or o["kind"] == m.kind) and (m.color is None or o["color"] == m.color)]

    def mentions(self, toks: list[str]) -> list[_Mention]:
        out, i = [], 0
        while i < len(toks):
            color = toks[i] if toks[i] in COLOR_WORDS else None
            j = i + (color is not None)
            hit = None
            for form, (kind, plural) in self.forms.items():
                if tuple(toks[j:j + len(form)]) == form:
                    hit = _Mention(i, j + len(form), color, kind, plural)
                    break
            if hit:
                out.append(hit)
                i = hit.end
            else:
                i += 1
        return out


def _name(m: _Mention) -> str:
    return " ".join(x for x in (m.color, m.kind) if x)


def check_facts(context: str, text: str) -> FactCheck:
    """Find the checkable facts ``text`` states and check them against ``context`` (notebook 03)."""
    facts = _Facts(context)
    toks = _words(text)
    res = FactCheck()
    seen: set[tuple[str, str]] = set()

    def add(ok: bool, what: str) -> None:
        if ("ok" if ok else "bad", what) not in seen:  # a fact repeated counts once
            seen.add(("ok" if ok else "bad", what))
            (res.ok if ok else res.bad).append(what)

    # Sentences are checked one at a time: a position word belongs to the objects of its sentence.
    bounds = [i for i, t in enumerate(toks) if t in ".!?;"]
    starts = [0] + [b + 1 for b in bounds]
    ends = bounds + [len(toks)]
    for s, e in zip(starts, ends):
        sent = toks[s:e]
        ms = facts.mentions(sent)
        # "removing the circle would leave two objects": counts of a changed scene, not this one.
        hypothetical = bool(set(sent) & _HYPOTHETICAL)
        # "In the top left corner there is a red circle": the place comes before the object.
        lead = sent[0] in ("in", "on", "at") if sent else False
        for k, m in enumerate(ms):
            objs = facts.match(m)
            before = sent[max(0, m.start - 3):m.start]
            # Count claims: "two red circles", "3 large objects", "no blue squares".
            j = m.start - 1
            while j >= 0 and sent[j] in _SIZES:
                j -= 1
            word = sent[j] if j >= 0 else ""
            claimed = int(float(word)) if word.replace(".", "").isdigit() else _NUMBERS.get(word)
            if claimed is not None or any(w in _NEGATIONS for w in before):
                if not hypothetical:
                    claimed = 0 if claimed is None else claimed
                    add(claimed == len(objs), f"{claimed} {_name(m)}")
            elif m.kind not in _GENERIC or m.color:
                add(bool(objs), f"there is a {_name(m)}")
            if not objs:
                continue
            nxt = ms[k + 1] if k + 1 < len(ms) else None
            window = sent[m.end:nxt.start if nxt else len(sent)]
            # "the circle is red" / "the red object is a circle": a property bound to the object.
            if window[:1] in (["is"], ["are"]):
                rest = [w for w in window[1:3] if w not in ("a", "an")]
                if rest and rest[0] in COLOR_WORDS and m.color is None:
                    add(any(o["color"] == rest[0] for o in objs), f"{_name(m)} is {rest[0]}")
                if nxt and len(window) <= 3 and m.kind in _GENERIC and nxt.kind not in _GENERIC:
                    add(any(o["kind"] == nxt.kind for o in objs), f"{_name(m)} is a {nxt.kind}")
            # Relative position: "<m> is to the left of / above / below <nxt>", "bigger than <nxt>".
            if nxt is not None:
                others = facts.match(nxt)
                rel = _relation(window)
                if rel and others:
                    ok = any(rel(o, p) for o in objs for p in others if o is not p)
                    add(ok, f"{_name(m)} {' '.join(window)} {_name(nxt)}")
                    continue
            # Absolute position: words in the window after the mention, or before the first one
            # ("In the top left corner there is a red circle").
            where = sent[:m.start] if (k == 0 and lead and set(sent[:m.start]) & _PLACE) else window
            claim = _place(where)
            if claim and not m.plural:
                add(any(_place_ok(claim, o) for o in objs), f"{_name(m)} {claim}")
    return res


_HYPOTHETICAL = {"if", "would", "leave", "leaves", "remain", "remains", "removing", "removed", "taking"}
_PLACE = {"top", "bottom", "left", "right", "center", "centre", "middle", "upper", "lower"}


def _relation(window: list[str]) -> Callable[[dict, dict], bool] | None:
    w = " ".join(window)
    if re.search(r"\bleft of\b", w):
        return lambda a, b: a["cx"] < b["cx"]
    if re.search(r"\bright of\b", w):
        return lambda a, b: a["cx"] > b["cx"]
    if re.search(r"\b(above|over)\b", w):
        return lambda a, b: a["cy"] < b["cy"]
    if re.search(r"\b(below|under|beneath)\b", w):
        return lambda a, b: a["cy"] > b["cy"]
    if re.search(r"\b(bigger|larger) than\b", w):
        return lambda a, b: a["area"] > b["area"]
    if re.search(r"\bsmaller than\b", w):
        return lambda a, b: a["area"] < b["area"]
    return None


def _place(words: list[str]) -> str | None:
    """The absolute place a phrase names ("top left", "center", "left"), or None."""
    if "half" in words or "of" in words[:1]:
        return None  # "in the left half" is a different claim; "of" starts a relation
    v = "top" if {"top", "upper"} & set(words) else "bottom" if {"bottom", "lower"} & set(words) else ""
    h = "left" if "left" in words else "right" if "right" in words else ""
    if v or h:
        return f"{v} {h}".strip()
    if {"center", "centre", "middle"} & set(words):
        return "center"
    return None


def _place_ok(claim: str, o: dict) -> bool:
    true = position_phrase(o["cx"], o["cy"])
    if claim == "center":
        return true == "center"
    return all(part in true.split() for part in claim.split())


def _overlap(answer: str, reference: str) -> float:
    """F1 of content words: how much of the reference's content the answer covers."""
    a = Counter(w for w in _words(answer) if w not in _STOP and w not in ".!?;")
    r = Counter(w for w in _words(reference) if w not in _STOP and w not in ".!?;")
    common = sum((a & r).values())
    if not common:
        return 0.0
    p, rc = common / sum(a.values()), common / sum(r.values())
    return 2 * p * rc / (p + rc)


class RuleJudge:
    """Offline, deterministic judge: scores 1-10 from checked facts (notebook 03).

    ``score = 1 + 9 * truth * (info + overlap) / 2`` where ``truth = (ok + 1) / (ok + 1 + 2 bad)``
    falls with every false fact (a wrong fact costs twice what a right one earns), ``info`` is
    the share of the reference's checked facts the answer matches in number (capped at 1) and
    ``overlap`` the content-word F1 with the reference. A truthful reference scores 10.
    """

    def score(self, context: str, question: str, answer: str, reference: str) -> tuple[float, float]:
        return self._one(context, answer, reference), self._one(context, reference, reference)

    def _one(self, context: str, answer: str, reference: str) -> float:
        mine, ref = check_facts(context, answer), check_facts(context, reference)
        truth = (len(mine.ok) + 1) / (len(mine.ok) + 1 + 2 * len(mine.bad))
        info = min(1.0, len(mine.ok) / len(ref.ok)) if ref.ok else 1.0
        return round(1 + 9 * truth * (info + _overlap(answer, reference)) / 2, 3)


# ---------------------------------------------------------------------------------------------
# The chat judge (LLaVA's judge format)
# ---------------------------------------------------------------------------------------------

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_RULE = (
    "We would like your feedback on the performance of two AI assistants answering the user "
    "question above about an image. You cannot see the image: the context describes it with a "
    "few captions and the boxes of its objects as 'category: [x1, y1, x2, y2]', normalised to "
    "0-1 with (0, 0) at the top left. Rate the helpfulness, relevance, accuracy and level of "
    "detail of each response. Each assistant gets an overall score from 1 to 10; higher is "
    "better. First output a single line with only the two scores, for Assistant 1 and "
    "Assistant 2, separated by a space. In the following lines explain your evaluation, "
    "avoiding any bias from the order in which the responses were presented.")


def judge_messages(context: str, question: str, answer: str, reference: str) -> list[dict]:
    """LLaVA's judge prompt: the reference is Assistant 1, the model Assistant 2."""
    content = (f"[Context]\n{context.strip()}\n\n[Question]\n{question.strip()}\n\n"
               f"[Assistant 1]\n{reference.strip()}\n\n[End of Assistant 1]\n\n"
               f"[Assistant 2]\n{answer.strip()}\n\n[End of Assistant 2]\n\n[System]\n{JUDGE_RULE}\n\n")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


def parse_judge_reply(reply: Any) -> tuple[float, float] | None:
    """``(assistant1, assistant2)`` from the reply's first non-empty line, or None if malformed.

    Accepts "8 7", "8, 7", "8/10 7/10" and "Assistant 1: 8 Assistant 2: 7"; anything else
    (a missing line, one or three numbers, a score outside 1-10) is None.
    """
    if not isinstance(reply, str):
        return None
    lines = [ln for ln in reply.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    line = re.sub(r"assistant\s*[12]\s*:?", " ", lines[0], flags=re.I)
    line = re.sub(r"/\s*10\b", " ", line)
    if re.search(r"[a-z]", line, re.I):
        return None
    nums = re.findall(r"\d+(?:\.\d+)?", line)
    if len(nums) != 2:
        return None
    a, b = float(nums[0]), float(nums[1])
    return (a, b) if 1 <= a <= 10 and 1 <= b <= 10 else None


class ChatJudge:
    """Judge through a chat endpoint, asked at temperature 0 as LLaVA's judge is (notebook 03).

    ``client``: a :class:`vlkit.chat_client.ChatClient` (anything with ``complete(messages,
    **params) -> reply text or None``). ``n_malformed`` counts replies that gave no scores
    (including replies the client found out of schema, for which it returns None); those
    judgements are None. An endpoint that fails or redirects raises the client's
    :class:`vlkit.chat_client.ChatClientError` (a :class:`vlkit.errors.ServiceError`), which
    stops the bench rather than scoring every answer as malformed.
    """

    def __init__(self, client):
        self.client = client
        self.n_malformed = 0

    def score(self, context: str, question: str, answer: str, reference: str) -> tuple[float, float] | None:
        reply = self.client.complete(judge_messages(context, question, answer, reference), temperature=0.0)
        got = parse_judge_reply(reply)
        if got is None:
            self.n_malformed += 1
            return None
        ref, model = got  # Assistant 1 is the reference
        return model, ref


# ---------------------------------------------------------------------------------------------
# Running a bench and summarising
# ---------------------------------------------------------------------------------------------

@dataclass
class Judgement:
    question_id: str
    type: str
    model: float | None      # None: the judge's reply was malformed
    reference: float | None


def evaluate(records: Iterable[dict], judge=None) -> list[Judgement]:
    """Judge every record (``question_id, type, context, question, answer, reference``) (notebook 03)."""
    judge = judge or RuleJudge()
    out = []
    for r in records:
        got = judge.score(r["context"], r["question"], r["answer"], r["reference"])
        model, ref = got if got is not None else (None, None)
        out.append(Judgement(str(r["question_id"]), _type(r["type"], r["question_id"]), model, ref))
    return out


def relative_scores(judgements: Iterable[Judgement]) -> dict:
    """Per type and ``overall``: mean model and reference scores, relative = model / reference x 100.

    Malformed judgements are left out of the means and counted in ``malformed``.
    """
    groups: dict[str, list[Judgement]] = {t: [] for t in TYPES}
    malformed = 0
    for j in judgements:
        if j.model is None or j.reference is None:
            malformed += 1
            continue
        groups.setdefault(j.type, []).append(j)
    groups["overall"] = [j for t in list(groups) for j in groups[t]]
    out: dict[str, Any] = {}
    for name, js in groups.items():
        if not js:
            continue
        m = sum(j.model for j in js) / len(js)
        r = sum(j.reference for j in js) / len(js)
        out[name] = {"model": m, "reference": r, "relative": 100 * m / r if r else math.nan, "n": len(js)}
    out["malformed"] = malformed
    return out


def format_relative(scores: dict, digits: int = 1) -> str:
    """The relative scores as a small text table."""
    lines = [f"{'type':<14}{'model':>8}{'ref':>8}{'relative':>10}{'n':>6}"]
    for name in (*TYPES, "overall"):
        if name in scores:
            s = scores[name]
            lines.append(f"{name:<14}{s['model']:>8.2f}{s['reference']:>8.2f}{s['relative']:>9.{digits}f}%{s['n']:>6}")
    lines.append(f"malformed judge replies: {scores.get('malformed', 0)}")
    return "\n".join(lines)


def _type(t: Any, qid: Any) -> str:
    if t not in TYPE_ALIASES:
        raise ValueError(f"question {qid!r}: unknown type {t!r} (expected one of {sorted(TYPE_ALIASES)})")
    return TYPE_ALIASES[t]


def make_questions(scenes, teacher=None, seed: int = 0, types: Iterable[str] = TYPES) -> list[dict]:
    """One question per scene and type, with its context and the teacher's reference answer (notebook 03).

    For conversations one turn is drawn at random, as LLaVA-Bench asks single questions.
    Records: ``question_id, image_id, type, context, question, reference``.
    """
    from vlkit import teacher as teacher_mod, world
    teacher = teacher or teacher_mod.TemplateTeacher(seed)
    out = []
    for scene in scenes:
        rng = random.Random(f"llava-bench-{seed}-{scene.id}")
        ctx = world.symbolic_context(scene, rng)
        for t in types:
            turns = teacher.generate(ctx, t, key=f"bench-{scene.id}")
            if not turns:
                continue  # a malformed chat-teacher reply: counted by the teacher
            k = rng.randrange(len(turns) // 2)
            q = turns[2 * k]["value"].replace(IMAGE_TOKEN, "").strip()
            out.append({"question_id": f"{scene.id}-{t}", "image_id": scene.id, "type": t,
                        "context": ctx, "question": q, "reference": turns[2 * k + 1]["value"]})
    return out


def _read_jsonl(path: str | Path, required: tuple[str, ...]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for n, rec in read_jsonl(path):
        missing = [k for k in required if k not in rec]
        if missing:
            raise ValueError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        qid = str(rec["question_id"])
        if qid in out:
            raise ValueError(f"{path}:{n}: duplicate question_id {qid!r}")
        out[qid] = rec
    if not out:
        raise ValueError(f"{path}: no records")
    return out


def load_bench(questions: str | Path, answers: str | Path, reference: str | Path | None = None) -> list[dict]:
    """Join LLaVA-Bench-style JSONL files into records for :func:`evaluate` (``vlkit eval llava-bench``).

    ``questions``: ``question_id, text`` (or ``question``), ``category`` (or ``type``),
    ``context``, and ``reference`` unless a ``reference`` answers file is given. ``answers``
    (and ``reference``): ``question_id, text``. An answer for an unknown question, or a
    question without an answer, is a ValueError naming the file.
    """
    qs = _read_jsonl(questions, ("question_id", "context"))
    ans = _read_jsonl(answers, ("question_id", "text"))
    refs = _read_jsonl(reference, ("question_id", "text")) if reference else None
    for name, d in (("answers", ans), ("reference", refs)):
        if d is None:
            continue
        extra = sorted(set(d) - set(qs))
        if extra:
            raise ValueError(f"{answers if name == 'answers' else reference}: unknown question_id {extra[0]!r}")
    out = []
    for qid, q in qs.items():
        if qid not in ans:
            raise ValueError(f"{answers}: no answer for question {qid!r}")
        ref = refs[qid]["text"] if refs is not None and qid in refs else q.get("reference")
        if ref is None:
            raise ValueError(f"{questions}: question {qid!r} has no reference answer")
        out.append({"question_id": qid, "type": _type(q.get("category", q.get("type")), qid),
                    "context": q["context"], "question": q.get("text", q.get("question", "")),
                    "answer": ans[qid]["text"], "reference": ref})
    return out
