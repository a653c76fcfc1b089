"""ScienceQA, in its own format: load, generate, prompt, parse answers, score (notebook 03).

LLaVA reports ScienceQA accuracy in columns a reader of the paper knows:

    NAT SOC LAN   subject: natural / social / language science
    TXT IMG NO    context: has a text hint / has an image / has neither
    G1-6 G7-12    grade band
    Avg           all problems of the split

TXT and IMG overlap (a problem with a hint and an image counts in both), as in ScienceQA's
``tools/evaluate_acc.py`` that LLaVA's table follows.

Everything here speaks ScienceQA's public ``problems.json`` schema (a dict ``pid -> problem``)
with images at ``images/<split>/<pid>/image.png``, so the real dataset drops in: point
:func:`load_problems` at it. :func:`generate` writes a benchmark of the same shape from
:mod:`vlkit.world` scenes, where every image question needs the image: its text and hint are
shared by scenes with different answers.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from vlkit import atomic, cache, paths

OPTIONS = "ABCDE"  # ScienceQA has at most five choices
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
SPLITS = ("train", "val", "test")
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
# Fields the scorer and the prompt need; real ScienceQA records have all of them.
REQUIRED = ("question", "choices", "answer", "hint", "image", "subject", "grade", "split")
# Fields of the real schema that scoring does not need; filled with "" when absent.
OPTIONAL = ("task", "topic", "category", "skill", "lecture", "solution")
# The subset the notebook reports against the bag-of-attributes baseline.
BINDING_CATEGORY = "Attribute binding"
LLAVA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# For answers given as the option's text (scored by likelihood, see vlkit.vlm_eval.rank_choices).
CHOICE_INSTRUCTION = "Answer with the text of the correct option."
# Version of choice_prompt / choice_answer: cached models trained on them name it in their keys.
CHOICE_FORMAT = 3


# ---------------------------------------------------------------------------------------------
# Loading and validating problems.json
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def validate_problem(pid: str, p: Any, where: str = "problems") -> dict:
    """Check one ScienceQA problem; return it with optional fields filled (notebook 03).

    Raises ``ValueError`` naming ``where`` and the problem id for anything the scorer could
    otherwise get silently wrong.
    """
    def bad(msg: str) -> ValueError:
        return ValueError(f"{where}: problem {pid!r}: {msg}")

    if not isinstance(p, dict):
        raise bad(f"expected an object, got {type(p).__name__}")
    missing = [k for k in REQUIRED if k not in p]
    if missing:
        raise bad(f"missing required field(s) {', '.join(missing)}")
    if not isinstance(p["question"], str):
        raise bad("'question' must be a string")
    ch = p["choices"]
    if not isinstance(ch, list) or not all(isinstance(c, str) for c in ch):
        raise bad("'choices' must be a list of strings")
    if not 2 <= len(ch) <= len(OPTIONS):
        raise bad(f"'choices' must have 2 to {len(OPTIONS)} entries, has {len(ch)}")
    a = p["answer"]
    if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(ch):
        raise bad(f"'answer' must be a choice index 0..{len(ch) - 1}, got {a!r}")
    if not isinstance(p["hint"], str):
        raise bad("'hint' must be a string (empty when there is none)")
    if p["image"] is not None and not (isinstance(p["image"], str) and p["image"]):
        raise bad("'image' must be a file name or null")
    if p["subject"] not in SUBJECTS:
        raise bad(f"'subject' must be one of {sorted(SUBJECTS)}, got {p['subject']!r}")
    if grade_number(p["grade"]) is None:
        raise bad(f"'grade' must be 'grade1'..'grade12', got {p['grade']!r}")
    if p["split"] not in SPLITS:
        raise bad(f"'split' must be one of {SPLITS}, got {p['split']!r}")
    return {**{k: "" for k in OPTIONAL}, **p}


def grade_number(grade: Any) -> int | None:
    """``"grade7"`` -> 7; anything else -> None."""
    m = re.fullmatch(r"grade(\d{1,2})", grade) if isinstance(grade, str) else None
    return int(m.group(1)) if m and 1 <= int(m.group(1)) <= 12 else None


def image_path(root: str | Path, pid: str, problem: dict) -> Path | None:
    """Where ScienceQA keeps a problem's image: ``<root>/images/<split>/<pid>/<image>``.

    ``root`` is the folder holding ``problems.json``. None for problems without an image.
    """
    if not problem.get("image"):
        return None
    return Path(root) / "images" / problem["split"] / str(pid) / problem["image"]


def load_problems(path: str | Path, check_images: bool | None = None) -> dict[str, dict]:
    """Read and validate a ScienceQA ``problems.json`` (the real one or ours) (notebook 03).

    ``path`` is the file or the folder holding it. Images are checked at
    ``images/<split>/<pid>/<image>``: all of them when ``check_images`` is True; by default
    those of the splits whose ``images/<split>/`` folder exists (LLaVA's copy of ScienceQA
    ships only ``images/test``; scoring alone needs no images). Errors name the file and the
    problem id.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "problems.json"
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty object mapping problem id -> problem")
    problems = {str(pid): validate_problem(str(pid), p, str(path)) for pid, p in data.items()}
    if check_images is not False:
        splits = set(SPLITS) if check_images else {s for s in SPLITS if (path.parent / "images" / s).is_dir()}
        for pid, p in problems.items():
            img = image_path(path.parent, pid, p) if p["split"] in splits else None
            if img is not None and not img.is_file():
                raise FileNotFoundError(f"{path}: problem {pid!r}: image {img} not found")
    return problems


def select(problems: dict[str, dict], split: str | None = None, category: str | None = None,
           has_image: bool | None = None) -> dict[str, dict]:
    """The problems of one split / category / context kind, in file order (notebook 03)."""
    return {pid: p for pid, p in problems.items()
            if (split is None or p["split"] == split)
            and (category is None or p.get("category") == category)
            and (has_image is None or bool(p["image"]) == has_image)}


# ---------------------------------------------------------------------------------------------
# Prompts in LLaVA's ScienceQA style
# ---------------------------------------------------------------------------------------------

def build_prompt(problem: dict, image_token: str | None = "<image>",
                 instruction: str | None = LLAVA_INSTRUCTION, question_last: bool = False) -> str:
    """The user turn for a problem, as LLaVA's ScienceQA evaluation writes it (notebook 03).

    ``<image>`` first (only when the problem has an image), then ``Context:`` (the hint, or
    N/A), the question, one ``A. choice`` line per option and the answer-format instruction;
    ``question_last`` moves the question after the instruction (see :func:`choice_prompt`).
    """
    context = problem["hint"].strip() or "N/A"
    question = [problem["question"].strip()]
    body = [f"{OPTIONS[i]}. {c}" for i, c in enumerate(problem["choices"])]
    if instruction:
        body.append(instruction)
    lines = [f"Context: {context}", *(body + question if question_last else question + body)]
    text = "\n".join(lines)
    if image_token and problem.get("image"):
        text = f"{image_token}\n{text}"
    return text


def choice_prompt(problem: dict) -> str:
    """The user turn when the answer is the option's text, scored by likelihood (notebook 03).

    The question comes last, right before the answer: a tiny LLM reads what is near the
    position it predicts from far more readily than what stands 30 tokens back (options and
    instruction). Measured on the binding questions alone, 3 stage-2 seeds: 38.7 / 37.6 / 37.9%
    with it and the option's spaced text, vs 31.1 / 33.0 / 35.9% for LLaVA's order and bare text
    (the subject that :func:`choice_answer` now restates adds far more).
    """
    return build_prompt(problem, instruction=CHOICE_INSTRUCTION, question_last=True)


# An attribute question names its subject last: "What colour is the triangle?", "What shape is
# the purple object?" (subject: "purple"), "What size is the purple diamond?".
_ATTRIBUTE_QUESTION = re.compile(r"^What (?:colou?r|shape|size) is the (.+?)(?: object)?\?$")


def answer_subject(question: str) -> str | None:
    """What an attribute question asks about, in the words its answer restates: "triangle",
    "purple", "purple diamond"; None for every other question (notebook 03)."""
    m = _ATTRIBUTE_QUESTION.match(question.strip())
    return m.group(1) if m else None


def choice_answer(problem: dict, index: int) -> str:
    """Option ``index``'s text as the assistant's answer, scored by likelihood (notebook 03).

    With a leading space, so that it is the tokens its option line ``A. orange`` shows
    (``Ġorange``, not ``or`` + ``ange``); after the :func:`answer_subject` of an attribute
    question: " triangle orange" for "What colour is the triangle?". The option is then
    predicted from the very token that names what to look up, and a tiny LLM learns to find
    that object among the visual tokens; with the subject a token or two further back ("?",
    the assistant tag, "triangle: orange") it must first carry the subject forward, which it
    learns far later. The subject is the same for every option: it conditions the ranking and
    gives nothing away (image-blind accuracy stays at chance).
    Measured on the binding questions alone (300 steps, stage-2 seeds 0 / 1 / 2):
    68.9 / 54.4 / 41.6% with the subject, 38.7 / 37.6 / 37.9% without; "triangle: orange" 41.9% (seed 0).
    """
    text = problem["choices"][index].strip()
    subject = answer_subject(problem["question"])
    return f" {subject} {text}" if subject else f" {text}"


ANSWER_STYLES = ("letter", "sentence", "choice")


def answer_text(problem: dict, style: str = "letter") -> str:
    """The target answer: ``"B"`` (LLaVA-1.5), ``"The answer is B."`` (LLaVA v1) or the
    option's own text (``"choice"``, for scoring by likelihood: :func:`choice_answer`)."""
    letter = OPTIONS[problem["answer"]]
    if style == "letter":
        return letter
    if style == "sentence":
        return f"The answer is {letter}."
    if style == "choice":
        return choice_answer(problem, problem["answer"])
    raise ValueError(f"unknown answer style {style!r} (expected one of {ANSWER_STYLES})")


def to_llava_json(problems: dict[str, dict], style: str = "letter") -> list[dict]:
    """Problems as LLaVA conversation records, image paths relative to the benchmark root.

    The same form the instruction data uses, so the trainer fine-tunes on ScienceQA's train
    split the way LLaVA does (notebook 03).
    """
    out = []
    for pid, p in problems.items():
        rec: dict[str, Any] = {"id": pid}
        if p["image"]:
            rec["image"] = f"images/{p['split']}/{pid}/{p['image']}"
        rec["conversations"] = [
            {"from": "human", "value": choice_prompt(p) if style == "choice" else build_prompt(p)},
            {"from": "gpt", "value": answer_text(p, style)},
        ]
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# Parsing answers
# ---------------------------------------------------------------------------------------------

_LETTER_ALONE = re.compile(r"^\(?([A-E])\)?[.:]?$")
_LETTER_FIRST = re.compile(r"^\(?([A-E])(?:\)|[.:])\s")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-E])\b\)?", re.IGNORECASE)


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", s.lower()).strip()


def parse_answer(text: str, choices: list[str], question: str | None = None) -> int | None:
    """The choice index an answer names, or None when it names none (notebook 03).

    Accepts LLaVA's forms: ``"B"``, ``"B. red"``, ``"(B) red"``, ``"... The answer is B."``,
    and an answer that is exactly one choice's text (``"red"``), after the question's
    :func:`answer_subject` when ``question`` is given (``"triangle red"``, see
    :func:`choice_answer`). A letter beyond the choices, or text naming no choice, is None:
    the scorer counts it as unparsed, never as some other choice.
    """
    t = text.replace("\n", " ").strip()
    m = _LETTER_ALONE.match(t) or _LETTER_FIRST.match(t)
    if m is None:
        found = _ANSWER_IS.findall(t)
        m_letter = found[-1].upper() if found else None
    else:
        m_letter = m.group(1)
    if m_letter is not None:
        i = OPTIONS.index(m_letter)
        return i if i < len(choices) else None
    # Whole-text match against the choices ("red", "The answer is red.").
    body = re.sub(r"^(?:the )?answer is:?\s*", "", _norm(t))
    subject = _norm(answer_subject(question) or "") if question else ""
    if subject and body.startswith(subject + " "):
        body = body[len(subject) + 1:]
    hits = [i for i, c in enumerate(choices) if _norm(c) and _norm(c) == body]
    return hits[0] if len(hits) == 1 else None


def _results_index(value: Any, where: str) -> int | None:
    """A ScienceQA result value: a choice index, -1 (LLaVA's 'FAILED') -> None."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected a choice index, got {value!r}")
    return None if value < 0 else value


def load_predictions(path: str | Path, problems: dict[str, dict]) -> dict[str, int | None]:
    """Read predictions as ``pid -> choice index`` (None = unparsed) (notebook 03).

    Two formats, detected from the content:

    - ScienceQA's result file ``{"results": {pid: index}}``, also LLaVA's variant of it
      (with ``acc``/``correct``/``outputs`` keys; ``-1`` means it failed to parse);
    - LLaVA's answers JSONL, one ``{"question_id": pid, "text": "The answer is B."}`` a line.

    A problem id not in ``problems``, a duplicated id or a malformed record raises
    ``ValueError`` naming the file (and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    preds: dict[str, int | None] = {}

    def known(pid: Any, where: str) -> str:
        pid = str(pid)
        if pid not in problems:
            raise ValueError(f"{where}: unknown problem id {pid!r} (not in the problems file)")
        if pid in preds:
            raise ValueError(f"{where}: duplicate prediction for problem {pid!r}")
        return pid

    whole = None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        pass
    if isinstance(whole, dict) and "results" in whole:
        results = whole["results"]
        if not isinstance(results, dict):
            raise ValueError(f"{path}: 'results' must map problem id -> choice index")
        for pid, v in results.items():
            pid = known(pid, str(path))
            idx = _results_index(v, f"{path}: problem {pid!r}")
            if idx is not None and idx >= len(problems[pid]["choices"]):
                idx = None  # names no choice: unparsed, never another choice
            preds[pid] = idx
        return preds
    if isinstance(whole, dict) and not ("question_id" in whole and "text" in whole):
        raise ValueError(f"{path}: a JSON object without 'results' is not a predictions file")

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "question_id" not in rec or "text" not in rec:
            raise ValueError(f"{where}: expected an object with 'question_id' and 'text'")
        if not isinstance(rec["text"], str):
            raise ValueError(f"{where}: 'text' must be a string")
        pid = known(rec["question_id"], where)
        preds[pid] = parse_answer(rec["text"], problems[pid]["choices"], problems[pid]["question"])
    if not preds:
        raise ValueError(f"{path}: no predictions found")
    return preds


def write_answers_jsonl(path: str | Path, answers: dict[str, str], problems: dict[str, dict]) -> None:
    """Write model answers as LLaVA's answers JSONL (``question_id``, ``prompt``, ``text``)."""
    lines = [json.dumps({"question_id": pid, "prompt": build_prompt(problems[pid]), "text": text})
             for pid, text in answers.items()]
    atomic.write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

def columns_of(problem: dict) -> list[str]:
    """The accuracy columns a problem counts in (besides Avg)."""
    cols = [SUBJECTS[problem["subject"]]]
    if problem["hint"]:
        cols.append("TXT")
    if problem["image"]:
        cols.append("IMG")
    if not problem["hint"] and not problem["image"]:
        cols.append("NO")
    cols.append("G1-6" if grade_number(problem["grade"]) <= 6 else "G7-12")
    return cols


def score(problems: dict[str, dict], predictions: dict[str, Any], split: str | None = "test") -> dict:
    """Accuracy (%) in the paper's columns over the problems of ``split`` (notebook 03).

    ``predictions`` maps pid -> choice index, None / -1 (unparsed) or a raw answer text
    (parsed with :func:`parse_answer`). A problem without a prediction counts as wrong and
    in ``missing``; one whose answer named no choice counts as wrong and in ``unparsed``.
    A prediction for an unknown problem raises ``ValueError``. Returns the columns
    (None where a column has no problems) plus ``counts``, ``correct``, ``total``,
    ``unparsed``, ``missing``.
    """
    unknown = [pid for pid in predictions if pid not in problems]
    if unknown:
        raise ValueError(f"predictions name {len(unknown)} unknown problem id(s), e.g. {unknown[0]!r}")
    chosen = select(problems, split=split) if split else problems
    if not chosen:
        raise ValueError(f"no problems in split {split!r}")
    n = dict.fromkeys(COLUMNS, 0)
    ok = dict.fromkeys(COLUMNS, 0)
    unparsed = missing = 0
    for pid, p in chosen.items():
        if pid not in predictions:
            missing += 1
            idx = None
        else:
            v = predictions[pid]
            if isinstance(v, str):
                idx = parse_answer(v, p["choices"], p["question"])
            elif v is None:
                idx = None
            else:
                idx = _results_index(v, f"prediction for problem {pid!r}")
                if idx is not None and idx >= len(p["choices"]):
                    idx = None
            unparsed += idx is None
        hit = idx == p["answer"]
        for col in (*columns_of(p), "Avg"):
            n[col] += 1
            ok[col] += hit
    out: dict[str, Any] = {c: (100.0 * ok[c] / n[c] if n[c] else None) for c in COLUMNS}
    out.update(counts=n, correct=ok["Avg"], total=n["Avg"], unparsed=unparsed, missing=missing)
    return out


def format_table(scores: dict | dict[str, dict], digits: int = 2) -> str:
    """The columns as a plain-text table; one row per method when given ``{name: scores}``."""
    rows = scores if all(isinstance(v, dict) for v in scores.values()) and "Avg" not in scores else {"": scores}
    width = max([len(r) for r in rows] + [6])
    fmt = lambda v: "-" if v is None else f"{v:.{digits}f}"  # noqa: E731
    lines = [" " * width + "".join(f"{c:>8}" for c in COLUMNS)]
    for name, s in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{fmt(s[c]):>8}" for c in COLUMNS))
    if len(rows) == 1:
        s = next(iter(rows.values()))
        if "total" in s:
            lines.append(f"{s['correct']}/{s['total']} correct, {s['unparsed']} unparsed, "
                         f"{s['missing']} missing")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------

def chance_accuracy(problems: dict[str, dict]) -> float:
    """Expected accuracy (%) of a uniform guess among each problem's choices."""
    return 100.0 * sum(1 / len(p["choices"]) for p in problems.values()) / len(problems)


def present_attributes(scene: Any) -> set[str]:
    """Every colour, shape and size name an image shows (scene as ``Scene`` or its dict)."""
    objs = scene["objects"] if isinstance(scene, dict) else [dataclasses.asdict(o) for o in scene.objects]
    return {str(o[k]) for o in objs for k in ("color", "shape", "size")}


def bag_of_attributes_accuracy(problems: dict[str, dict], scenes: dict[str, Any]) -> float:
    """Expected accuracy (%) of guessing among the choices whose attribute the image shows.

    The baseline of a model that knows which colours (shapes, sizes) are in the image but not
    which object has which: for "What colour is the triangle?" it picks uniformly among the
    offered colours present anywhere in the image (notebook 03). ``scenes`` maps pid -> scene
    (``scenes.json`` of a generated benchmark); meant for the attribute-binding subset.
    """
    total = 0.0
    for pid, p in problems.items():
        if pid not in scenes:
            raise ValueError(f"no scene for problem {pid!r}: the baseline needs the image's contents")
        present = present_attributes(scenes[pid])
        cand = [i for i, c in enumerate(p["choices"]) if c in present] or list(range(len(p["choices"])))
        total += (p["answer"] in cand) / len(cand)
    return 100.0 * total / len(problems)


def load_scenes(root: str | Path) -> dict[str, dict]:
    """``scenes.json`` of a generated benchmark: pid -> ``Scene.to_dict()`` of its image."""
    return _read_json(Path(root) / "scenes.json")


# ---------------------------------------------------------------------------------------------
# Generating a benchmark from world scenes
# ---------------------------------------------------------------------------------------------

def _default_world():
    from vlkit import world
    kw = {"min_objects": 2, "max_objects": 4}
    names = {f.name for f in dataclasses.fields(world.WorldConfig)}
    if "text_prob" in names:
        kw["text_prob"] = 0.3  # some objects carry a word: the language-science image questions
    return world.WorldConfig(**{k: v for k, v in kw.items() if k in names})


@dataclass
class ScienceQAConfig:
    """A generated ScienceQA-format benchmark (notebook 03).

    ``image_share`` of the problems come with an image (each its own scene); the rest are
    text questions with or without a hint. ``world`` should match the training data's world so
    the images look like the ones the model learned from.
    """
    n_problems: int = 1200
    seed: int = 0
    resolution: int = 64
    image_share: float = 0.7
    split_shares: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test
    world: Any = field(default_factory=_default_world)
    profile: str = "full"

    def __post_init__(self):
        if self.n_problems < 1:
            raise ValueError(f"n_problems must be >= 1, got {self.n_problems}")
        if not 0 <= self.image_share <= 1:
            raise ValueError(f"image_share must be in [0, 1], got {self.image_share}")
        if len(self.split_shares) != 3 or abs(sum(self.split_shares) - 1) > 1e-6:
            raise ValueError(f"split_shares must be three shares summing to 1, got {self.split_shares}")
        self.split_shares = tuple(float(s) for s in self.split_shares)

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "ScienceQAConfig":
        sizes = {"smoke": dict(n_problems=120), "full": dict(n_problems=1200)}
        if profile not in sizes:
            raise ValueError(f"unknown profile {profile!r} (expected one of {sorted(sizes)})")
        return cls(**{**sizes[profile], "profile": profile, **overrides})


# A template turns (rng, scene or None) into the fields of one problem, correct choice first,
# or None when the scene does not support it (then a new scene is drawn).
Template = Callable[[random.Random, Any], "dict | None"]
TEMPLATES: dict[str, tuple[str, bool, Template, float]] = {}  # name -> (subject, image?, fn, weight)


def _template(name: str, subject: str, image: bool, weight: float = 1.0):
    """Register a template; ``weight`` is its relative frequency among its kind (image or not)."""
    def deco(fn: Template) -> Template:
        TEMPLATES[name] = (subject, image, fn, weight)
        return fn
    return deco


def _center(o) -> tuple[float, float]:
    x1, y1, x2, y2 = o.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def _pick(rng: random.Random, correct: str, present: Iterable[str], pool: Iterable[str], k: int = 4) -> list[str]:
    """``correct`` first, then distractors: what the image shows first, then the rest of the pool."""
    shown = [c for c in dict.fromkeys(present) if c != correct]
    rest = [c for c in dict.fromkeys(pool) if c != correct and c not in shown]
    rng.shuffle(shown)
    rng.shuffle(rest)
    return [correct, *(shown + rest)[: k - 1]]


def _unique(objs, key) -> dict:
    """key value -> the one object with it (values shared by several objects are dropped)."""
    seen: dict = {}
    for o in objs:
        seen.setdefault(key(o), []).append(o)
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


MARGIN = 0.12  # centres closer than this (in image widths) are not called left/right of each other


@_template("count_all", "natural science", True)
def _count_all(rng, scene):
    n = len(scene.objects)
    pool = [str(i) for i in range(1, 8)]
    return dict(question="How many shapes are in the picture?",
                choices=_pick(rng, str(n), [], pool), grade=f"grade{rng.choice([1, 2])}",
                topic="counting", category="Counting", skill="Count the objects in a picture",
                lecture="To count objects, point at each one exactly once.",
                solution=f"The picture shows {n} shape{'s' * (n != 1)}.")


@_template("count_color", "natural science", True)
def _count_color(rng, scene):
    from vlkit import world
    color = rng.choice(sorted({o.color for o in scene.objects}) + sorted(world.COLORS))
    n = sum(o.color == color for o in scene.objects)
    return dict(question=f"How many {color} shapes are in the picture?",
                choices=_pick(rng, str(n), [], [str(i) for i in range(0, 6)]),
                grade=f"grade{rng.choice([3, 4])}", topic="counting", category="Counting",
                skill="Count objects of one colour",
                lecture="Count only the objects that have the colour asked about.",
                solution=f"There {'is' if n == 1 else 'are'} {n} {color} shape{'s' * (n != 1)}.")


# The binding questions are the ones notebook 03 reports against the bag-of-attributes
# baseline: more of them, so that subset is not too small to read.
@_template("color_of_shape", "natural science", True, weight=3)
def _color_of_shape(rng, scene):
    from vlkit import world
    unique = _unique(scene.objects, lambda o: o.shape)
    options = [o for o in unique.values() if any(p.color != o.color for p in scene.objects)]
    if not options:
        return None  # needs a lone shape and another colour in the picture: a binding question
    o = rng.choice(sorted(options, key=lambda o: o.shape))
    return dict(question=f"What colour is the {o.shape}?",
                choices=_pick(rng, o.color, [p.color for p in scene.objects], world.COLORS),
                grade=f"grade{rng.choice([7, 8])}", topic="colours and shapes",
                category=BINDING_CATEGORY, skill="Bind a colour to a shape",
                lecture="Each object has its own colour; find the object first, then read its colour.",
                solution=f"The {o.shape} is {o.color}.")


@_template("shape_of_color", "natural science", True, weight=2)
def _shape_of_color(rng, scene):
    from vlkit import world
    unique = _unique(scene.objects, lambda o: o.color)
    options = [o for o in unique.values() if any(p.shape != o.shape for p in scene.objects)]
    if not options:
        return None
    o = rng.choice(sorted(options, key=lambda o: o.color))
    return dict(question=f"What shape is the {o.color} object?",
                choices=_pick(rng, o.shape, [p.shape for p in scene.objects], world.SHAPES),
                grade=f"grade{rng.choice([7, 8])}", topic="colours and shapes",
                category=BINDING_CATEGORY, skill="Bind a shape to a colour",
                lecture="Find the object with the colour asked about, then name its shape.",
                solution=f"The {o.color} object is a {o.shape}.")


@_template("size_of_shape", "natural science", True)
def _size_of_shape(rng, scene):
    from vlkit import world
    unique = _unique(scene.objects, lambda o: o.category)
    options = [o for o in unique.values() if any(p.size != o.size for p in scene.objects)]
    if not options:
        return None
    o = rng.choice(sorted(options, key=lambda o: o.category))
    return dict(question=f"What size is the {o.category}?",
                choices=_pick(rng, o.size, [], world.SIZES, k=len(world.SIZES)),
                grade=f"grade{rng.choice([9, 10])}", topic="size", category=BINDING_CATEGORY,
                skill="Bind a size to an object",
                lecture="Compare the object with the others in the picture to judge its size.",
                solution=f"The {o.category} is {o.size}.")


@_template("relative_position", "natural science", True)
def _relative_position(rng, scene):
    unique = list(_unique(scene.objects, lambda o: o.category).values())
    pairs = [(a, b) for a in unique for b in unique
             if a is not b and abs(_center(a)[0] - _center(b)[0]) > MARGIN]
    if not pairs:
        return None
    a, b = rng.choice(sorted(pairs, key=lambda ab: (ab[0].category, ab[1].category)))
    side = "left" if _center(a)[0] < _center(b)[0] else "right"
    return dict(question=f"Is the {a.category} to the left or to the right of the {b.category}?",
                choices=_pick(rng, side, [], ["left", "right"], k=2),
                grade=f"grade{rng.choice([9, 10, 11])}", topic="spatial reasoning", category="Spatial relations",
                skill="Compare the positions of two objects",
                lecture="Left and right are seen from the viewer of the picture.",
                solution=f"The {a.category} is to the {side} of the {b.category}.")


def _extreme(scene, axis: int, lowest: bool):
    """The one object clearly furthest along an axis (by MARGIN), else None."""
    objs = list(_unique(scene.objects, lambda o: o.category).values())
    if len(objs) < 2 or len(objs) < len(scene.objects):
        return None, objs
    ranked = sorted(objs, key=lambda o: _center(o)[axis], reverse=not lowest)
    if abs(_center(ranked[0])[axis] - _center(ranked[1])[axis]) <= MARGIN:
        return None, objs
    return ranked[0], objs


@_template("leftmost", "natural science", True)
def _leftmost(rng, scene):
    left = rng.random() < 0.5
    o, objs = _extreme(scene, 0, left)
    if o is None:
        return None
    word = "left" if left else "right"
    return dict(question=f"Which shape is farthest to the {word}?",
                choices=_pick(rng, f"the {o.category}", [f"the {p.category}" for p in objs], [], k=4),
                grade=f"grade{rng.choice([3, 4])}", topic="spatial reasoning", category="Spatial relations",
                skill="Find the object farthest to one side",
                lecture="Compare where each object is from left to right.",
                solution=f"The {o.category} is farthest to the {word}.")


MAP_HINT = "The picture is a map. North is at the top of the map and east is on the right."


@_template("map_extreme", "social science", True)
def _map_extreme(rng, scene):
    direction = rng.choice(["north", "south", "east", "west"])
    axis, lowest = {"north": (1, True), "south": (1, False), "east": (0, False), "west": (0, True)}[direction]
    o, objs = _extreme(scene, axis, lowest)
    if o is None:
        return None
    return dict(question=f"Which shape is farthest {direction} on the map?", hint=MAP_HINT,
                choices=_pick(rng, f"the {o.category}", [f"the {p.category}" for p in objs], [], k=4),
                grade=f"grade{rng.choice([4, 5])}", topic="geography", category="Geography",
                skill="Read a map: cardinal directions",
                lecture="On a map with north at the top, south is at the bottom, east is right and west is left.",
                solution=f"The {o.category} is farthest {direction}.")


@_template("map_direction", "social science", True)
def _map_direction(rng, scene):
    unique = list(_unique(scene.objects, lambda o: o.category).values())
    pairs = []
    for a in unique:
        for b in unique:
            if a is b:
                continue
            dx, dy = _center(a)[0] - _center(b)[0], _center(a)[1] - _center(b)[1]
            # Only pairs where one direction clearly dominates: the answer is unambiguous.
            if max(abs(dx), abs(dy)) > MARGIN and max(abs(dx), abs(dy)) > 2 * min(abs(dx), abs(dy)):
                d = ("east" if dx > 0 else "west") if abs(dx) > abs(dy) else ("south" if dy > 0 else "north")
                pairs.append((a, b, d))
    if not pairs:
        return None
    a, b, d = rng.choice(sorted(pairs, key=lambda t: (t[0].category, t[1].category)))
    return dict(question=f"Which direction is the {a.category} from the {b.category}?", hint=MAP_HINT,
                choices=_pick(rng, d, [], ["north", "south", "east", "west"]),
                grade=f"grade{rng.choice([7, 8])}", topic="geography", category="Geography",
                skill="Read a map: relative directions",
                lecture="Start at the second place and see which way you go to reach the first.",
                solution=f"The {a.category} is {d} of the {b.category}.")


TOWNS = ("Ardale", "Brimley", "Cotfield", "Dunmore", "Elmstead", "Fernhill", "Glenrock", "Hollybrook")


@_template("town_order", "social science", False)
def _town_order(rng, scene):
    towns = rng.sample(TOWNS, 3)  # towns[0] is farthest in `d`
    d, opposite = rng.choice([("north", "south"), ("south", "north"), ("east", "west"), ("west", "east")])
    facts = [f"{towns[0]} is {d} of {towns[1]}.", f"{towns[1]} is {d} of {towns[2]}."]
    rng.shuffle(facts)
    far = rng.random() < 0.5
    ask = d if far else opposite
    answer = towns[0] if far else towns[2]
    return dict(question=f"Which town is farthest {ask}?", hint=" ".join(facts),
                choices=_pick(rng, answer, towns, [], k=3), grade=f"grade{rng.choice([6, 7, 8])}",
                topic="geography", category="Geography", skill="Reason about relative locations",
                lecture="If A is north of B and B is north of C, then A is north of C.",
                solution=f"{answer} is farthest {ask}.")


@_template("opposite_direction", "social science", False)
def _opposite_direction(rng, scene):
    opp = {"north": "south", "south": "north", "east": "west", "west": "east"}
    d = rng.choice(sorted(opp))
    return dict(question=f"Which direction is opposite to {d}?",
                choices=_pick(rng, opp[d], [], [x for x in opp if x != d], k=3),
                grade=f"grade{rng.choice([1, 2])}", topic="geography", category="Geography",
                skill="Identify cardinal directions",
                lecture="The four cardinal directions are north, east, south and west.",
                solution=f"The opposite of {d} is {opp[d]}.")


SPELLING_WORDS = ("apple", "river", "stone", "cloud", "tiger", "music", "bread", "light", "green", "house")


@_template("word_on_object", "language science", True)
def _word_on_object(rng, scene):
    from vlkit import world
    unique = _unique(scene.objects, lambda o: o.category)
    options = [o for o in unique.values() if getattr(o, "text", None)]
    if not options:
        return None
    o = rng.choice(sorted(options, key=lambda o: o.category))
    return dict(question=f"What is written on the {o.category}?",
                choices=_pick(rng, o.text, [p.text for p in scene.objects if getattr(p, "text", None)], world.WORDS),
                grade=f"grade{rng.choice([2, 3])}", topic="reading", category="Reading",
                skill="Read a word in a picture",
                lecture="Read the letters written on the object from left to right.",
                solution=f"The {o.category} says \"{o.text}\".")


def _misspell(rng: random.Random, w: str) -> str:
    i = rng.randrange(len(w) - 1)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap" and w[i] != w[i + 1]:
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    if kind == "drop":
        return w[:i] + w[i + 1:]
    return w[:i] + w[i] + w[i:]


@_template("spelling", "language science", False)
def _spelling(rng, scene):
    w = rng.choice(SPELLING_WORDS)
    wrong = []
    while len(wrong) < 2:
        m = _misspell(rng, w)
        if m != w and m not in wrong:
            wrong.append(m)
    return dict(question="Which word is spelled correctly?", choices=[w, *wrong],
                grade=f"grade{rng.choice([1, 2])}", topic="spelling", category="Spelling",
                skill="Spell common words", lecture="Say the word slowly and check each letter.",
                solution=f"\"{w}\" is spelled correctly.")


@_template("alphabetical", "language science", False)
def _alphabetical(rng, scene):
    words = rng.sample(SPELLING_WORDS, 3)
    first = min(words)
    return dict(question="Which word would you find first in a dictionary?",
                choices=_pick(rng, first, words, [], k=3), grade=f"grade{rng.choice([3, 4])}",
                topic="reference skills", category="Alphabetical order",
                skill="Use guide words and alphabetical order",
                lecture="Dictionary words are in alphabetical order: compare first letters, then the next.",
                solution=f"\"{first}\" comes first in alphabetical order.")


@_template("word_class", "language science", False)
def _word_class(rng, scene):
    from vlkit import world
    shape, color, size = rng.choice(world.SHAPES), rng.choice(sorted(world.COLORS)), rng.choice(world.SIZES)
    sentence = f"The {size} {color} {shape} is next to the wall."
    kind, answer = rng.choice([("colour", color), ("shape", shape), ("size", size)])
    return dict(question=f"Which word in the sentence names a {kind}?", hint=f"Read the sentence: {sentence}",
                choices=_pick(rng, answer, [shape, color, size], [], k=3),
                grade=f"grade{rng.choice([3, 4, 5])}", topic="vocabulary", category="Word meaning",
                skill="Identify describing words", lecture="Describing words tell us about colour, shape and size.",
                solution=f"\"{answer}\" names a {kind}.")


@_template("tense", "language science", False)
def _tense(rng, scene):
    from vlkit import world
    shape = rng.choice(world.SHAPES)
    verbs = {"past tense": "moved", "present tense": "moves", "future tense": "will move"}
    tense = rng.choice(sorted(verbs))
    where = rng.choice(["to the left", "to the right", "up", "down"])
    return dict(question="Which tense does the sentence use?",
                hint=f"The {shape} {verbs[tense]} {where}.",
                choices=_pick(rng, tense, [], verbs, k=3), grade=f"grade{rng.choice([7, 8, 9])}",
                topic="verbs", category="Verb tense", skill="Is the sentence in the past, present, or future tense?",
                lecture="Past tense tells what already happened; future tense often uses 'will'.",
                solution=f"The verb \"{verbs[tense]}\" is in the {tense}.")


def _problem(i: int, cfg: ScienceQAConfig):
    """Problem i of the benchmark: depends only on (seed, i). Returns (problem, scene or None)."""
    from vlkit import world
    rng = random.Random(f"scienceqa-{cfg.seed}-{i}")
    with_image = rng.random() < cfg.image_share
    names = sorted(n for n, t in TEMPLATES.items() if t[1] == with_image)
    weights = [TEMPLATES[n][3] for n in names]
    u = rng.random()
    split = "train" if u < cfg.split_shares[0] else "val" if u < cfg.split_shares[0] + cfg.split_shares[1] else "test"
    for _attempt in range(50):
        name = rng.choices(names, weights)[0]
        subject, _, fn, _ = TEMPLATES[name]
        scene = world.sample_scene(rng, cfg.world, scene_id=str(i + 1)) if with_image else None
        fields = fn(rng, scene)
        if fields is not None:
            break
    else:  # pragma: no cover - every world config supports counting
        raise RuntimeError(f"could not generate problem {i}: no template fits the sampled scenes")
    correct, choices = fields["choices"][0], list(fields["choices"])
    rng.shuffle(choices)  # the answer's position is uniform: "always A" is chance
    problem = {
        "question": fields["question"], "choices": choices, "answer": choices.index(correct),
        "hint": fields.get("hint", ""), "image": "image.png" if with_image else None,
        "task": "closed choice", "grade": fields["grade"], "subject": subject,
        "topic": fields["topic"], "category": fields["category"], "skill": fields["skill"],
        "lecture": fields["lecture"], "solution": fields["solution"], "split": split,
    }
    return problem, scene


def generate_problems(cfg: ScienceQAConfig) -> tuple[dict[str, dict], dict[str, Any]]:
    """``(problems, scenes)``: the benchmark in memory, pids "1".."N" (notebook 03)."""
    problems, scenes = {}, {}
    for i in range(cfg.n_problems):
        pid = str(i + 1)
        problems[pid], scene = _problem(i, cfg)
        if scene is not None:
            scenes[pid] = scene
    return problems, scenes


def write_benchmark(out: str | Path, cfg: ScienceQAConfig) -> Path:
    """Write a benchmark folder in ScienceQA's layout (notebook 03; ``vlkit eval generate-scienceqa``).

    ``problems.json``, ``pid_splits.json``, ``images/<split>/<pid>/image.png``, plus
    ``scenes.json`` (pid -> scene of its image, for baselines and qualitative plots) and
    ``llava_<split>.json`` (LLaVA conversation records). Written atomically.
    """
    out = Path(out)
    with atomic.atomic_dir(out) as tmp:
        _write_into(tmp, cfg)
    return out


def _write_into(folder: Path, cfg: ScienceQAConfig) -> None:
    from tqdm.auto import tqdm

    from vlkit import world
    problems, scenes = generate_problems(cfg)
    for pid, scene in tqdm(scenes.items(), desc="scienceqa images", disable=len(scenes) < 2000):
        path = image_path(folder, pid, problems[pid])
        path.parent.mkdir(parents=True, exist_ok=True)
        world.render(scene, cfg.resolution).save(path)
    atomic.write_json(folder / "problems.json", problems)
    atomic.write_json(folder / "pid_splits.json",
                      {s: [pid for pid, p in problems.items() if p["split"] == s] for s in SPLITS})
    atomic.write_json(folder / "scenes.json", {pid: s.to_dict() for pid, s in scenes.items()}, indent=None)
    for s in SPLITS:
        atomic.write_json(folder / f"llava_{s}.json", to_llava_json(select(problems, split=s)), indent=None)


def ensure_scienceqa(cfg: ScienceQAConfig) -> Path:
    """The benchmark folder for ``cfg`` under ``artifacts/<profile>/``, built when missing (notebook 03)."""
    return cache.cached(paths.artifacts_dir(cfg.profile), "scienceqa", cfg, lambda tmp: _write_into(tmp, cfg))
