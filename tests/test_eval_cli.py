"""``vlkit eval``: generate a benchmark, score predictions, bad input -> one line on stderr, exit 2."""
import json

import pytest

from vlkit import cli
from vlkit.benchmarks import scienceqa as sqa


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("sqa") / "bench"
    assert cli.main(["eval", "generate-scienceqa", "--out", str(out), "--n", "60", "--seed", "3"]) == 0
    return out


def test_generate_then_score_table_and_json(bench, tmp_path, capsys):
    problems = sqa.load_problems(bench)
    test = sqa.select(problems, split="test")
    # LLaVA answers JSONL: all test problems right, written as "The answer is X."
    f = tmp_path / "answers.jsonl"
    f.write_text("\n".join(json.dumps({"question_id": pid, "text": sqa.answer_text(p, "sentence")})
                           for pid, p in test.items()))
    capsys.readouterr()
    assert cli.main(["eval", "scienceqa", "--problems", str(bench / "problems.json"),
                     "--predictions", str(f)]) == 0
    out = capsys.readouterr().out
    assert "NAT" in out and "G7-12" in out and "100.00" in out
    # ScienceQA's result file, everything 0, as JSON output.
    r = tmp_path / "res.json"
    r.write_text(json.dumps({"results": {pid: 0 for pid in problems}}))
    assert cli.main(["eval", "scienceqa", "--problems", str(bench), "--predictions", str(r),
                     "--split", "val", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == sqa.score(problems, {pid: 0 for pid in problems}, split="val")


@pytest.mark.parametrize("case, message", [
    ("unknown_id", "unknown problem id"), ("missing_field", "missing required field"),
    ("no_file", "no such file"), ("not_predictions", "not a predictions file"),
    ("wrong_split", "none of its 1 predictions is for a problem of split 'test' (they are for train)"),
])
def test_bad_input_one_line_exit_2(bench, tmp_path, capsys, case, message):
    problems = tmp_path / "problems.json"
    raw = json.loads((bench / "problems.json").read_text())
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"question_id": "1", "text": "A"}) + "\n")
    if case == "unknown_id":
        preds.write_text(json.dumps({"question_id": "99999", "text": "A"}) + "\n")
    if case == "missing_field":
        del raw["2"]["choices"]
    if case == "no_file":
        preds = tmp_path / "nope.jsonl"
    if case == "not_predictions":
        preds.write_text(json.dumps({"foo": 1}))
    if case == "wrong_split":  # a file of train-split answers scored on the (default) test split
        pid = next(pid for pid, p in raw.items() if p["split"] == "train")
        preds.write_text(json.dumps({"question_id": pid, "text": "A"}) + "\n")
    problems.write_text(json.dumps(raw))
    capsys.readouterr()
    rc = cli.main(["eval", "scienceqa", "--problems", str(problems), "--predictions", str(preds)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


def test_llava_bench_cli(tmp_path, capsys):
    ctx = "A red circle.\n\nred circle: [0.1, 0.1, 0.3, 0.3]\n"
    q = tmp_path / "q.jsonl"
    a = tmp_path / "a.jsonl"
    q.write_text("\n".join(json.dumps({"question_id": i, "text": "How many circles?", "category": c,
                                       "context": ctx, "reference": "There is one red circle."})
                           for i, c in enumerate(["conv", "detail", "complex"])))
    a.write_text("\n".join(json.dumps({"question_id": i, "text": t})
                           for i, t in enumerate(["There is one red circle.", "There are two red circles.",
                                                  "One circle."])))
    capsys.readouterr()
    assert cli.main(["eval", "llava-bench", "--questions", str(q), "--answers", str(a), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["conversation"]["relative"] == 100 and s["detail"]["relative"] < 100
    a.write_text(json.dumps({"question_id": 7, "text": "x"}))
    assert cli.main(["eval", "llava-bench", "--questions", str(q), "--answers", str(a)]) == 2
    assert "unknown question_id" in capsys.readouterr().err
