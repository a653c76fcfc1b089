"""ScienceQA, in its own format: load, prompt, parse answers, score, baselines (notebook 03).

LLaVA reports ScienceQA accuracy in columns a reader of the paper knows:

    NAT SOC LAN   subject: natural / social / language science
    TXT IMG NO    context: has a text hint / has an image / has neither
    G1-6 G7-12    grade band
    Avg           all problems of the split

TXT and IMG overlap (a problem with a hint and an image counts in both), as in ScienceQA's
``tools/evaluate_acc.py`` that LLaVA's table follows.

Everything here speaks ScienceQA's public ``problems.json`` schema (a dict ``pid -> problem``)
with images at ``images/<split>/<pid>/image.png``, so the real dataset drops in: point
:func:`load_problems` at it. :mod:`vlkit.world.scienceqa` generates a benchmark of the same
shape from world scenes.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from vlkit import atomic
from vlkit.tokens import IMAGE_TOKEN

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
# The counting questions ("How many shapes are in the picture?"), notebook 06's counting subset.
COUNTING_CATEGORY = "Counting"
LLAVA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# For answers given as the option's text (scored by likelihood, see vlkit.eval.scoring.rank_choices).
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

    A file read before, unchanged since (same size and modification time), is not parsed and checked
    again: notebook 06 evaluates ~40 configurations in one process, each reading the same 19K problems
    (1.6 s per read). Each call returns its own problem dicts, so a caller's edits stay its own.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "problems.json"
    st = path.stat() if path.is_file() else None
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size, check_images) if st else None
    if key is None or key not in _PROBLEMS:
        problems = _load_problems(path, check_images)
        if key is not None:
            _PROBLEMS.clear()  # one file at a time: a profile's benchmark, not a growing store
            _PROBLEMS[key] = problems
    return {pid: dict(p) for pid, p in (_PROBLEMS[key] if key is not None else problems).items()}


_PROBLEMS: dict[tuple, dict[str, dict]] = {}


def _load_problems(path: Path, check_images: bool | None) -> dict[str, dict]:
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

def build_prompt(problem: dict, image_token: str | None = IMAGE_TOKEN,
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


def answers_jsonl(answers: dict[str, str], problems: dict[str, dict]) -> str:
    """Model answers as LLaVA's answers JSONL text (``question_id``, ``prompt``, ``text``), the file
    ``model_vqa_science`` writes and :func:`load_predictions` reads (notebook 03)."""
    return "".join(json.dumps({"question_id": pid, "prompt": build_prompt(problems[pid]), "text": text},
                              ensure_ascii=False) + "\n" for pid, text in answers.items())


def write_answers_jsonl(path: str | Path, answers: dict[str, str], problems: dict[str, dict]) -> None:
    """Write model answers as LLaVA's answers JSONL (:func:`answers_jsonl`), atomically."""
    atomic.write_text(path, answers_jsonl(answers, problems))


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
