"""``vlkit data ...`` through vlkit.cli.main(argv): good runs, bad input, nothing half-written."""
import json

import pytest

from vlkit.cli import main

CONTEXT = """A dog and a person in a park.
A brown dog on the grass.
A person standing on the right.
A park with a dog.
A dog and its owner.

brown dog: [0.050, 0.600, 0.300, 0.850]
person: [0.600, 0.200, 0.750, 0.900]
"""


def test_generate_then_stats(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "generate", "--out", str(out), "--n-images", "12", "--seed", "3",
                 "--resolution", "32", "--quiet", "--no-hf"]) == 0
    assert "wrote" in capsys.readouterr().out
    from PIL import Image
    img = next((out / "images").glob("*.png"))
    assert Image.open(img).size == (32, 32)
    assert main(["data", "stats", str(out / "llava_instruct.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == json.loads((out / "stats.json").read_text())["records"] > 0
    assert main(["data", "stats", str(out / "llava_instruct.json")]) == 0
    assert "question kinds" in capsys.readouterr().out


def test_from_context_prints_record(tmp_path, capsys):
    f = tmp_path / "park.txt"
    f.write_text(CONTEXT)
    for kind in ("conversation", "detail", "reasoning"):
        assert main(["data", "from-context", str(f), "--kind", kind]) == 0
        rec = json.loads(capsys.readouterr().out)
        assert rec["id"] == "park" and rec["type"] == kind
        assert rec["conversations"][0]["value"].startswith("<image>\n")
        if kind == "detail":
            assert "dog" in rec["conversations"][1]["value"]


def err(capsys):
    e = capsys.readouterr().err.strip()
    assert len(e.splitlines()) == 1, e
    return e


def test_bad_context_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.txt"
    f.write_text("A dog.\n\ndog: [0.1, 0.2, 1.5, 0.3]\n")
    assert main(["data", "from-context", str(f), "--kind", "detail"]) == 2
    assert "bad.txt, line 3" in err(capsys)
    assert main(["data", "from-context", str(tmp_path / "none.txt"), "--kind", "detail"]) == 2
    assert "none.txt" in err(capsys)


def test_bad_llava_file(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text('[{"id": 1, "conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}]')
    assert main(["data", "stats", str(f)]) == 2
    e = err(capsys)
    assert "x.json" in e and "record 0" in e and "'bot'" in e
    f.write_text('[{"id": 1, "conversations": [')
    assert main(["data", "stats", str(f)]) == 2
    assert "truncated" in err(capsys)


def test_unknown_teacher_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "generate", "--out", str(tmp_path / "o"), "--n-images", "2", "--teacher", "oracle"])
    assert e.value.code != 0 and "oracle" in capsys.readouterr().err
    assert main(["data", "generate", "--out", str(tmp_path / "o"), "--n-images", "2",
                 "--teacher", "chat"]) == 2
    assert "base_url" in err(capsys)
    assert not (tmp_path / "o").exists()


def test_unwritable_output_leaves_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["data", "generate", "--out", str(blocker / "ds"), "--n-images", "3", "--quiet"]) == 2
    assert "file" in err(capsys)
    assert main(["data", "generate", "--out", str(blocker), "--n-images", "3", "--quiet"]) == 2
    assert "not a folder" in err(capsys)
    assert blocker.read_text() == "not a folder"


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["data", "generate", "--out", str(out), "--n-images", "3", "--quiet", "--no-hf"]) == 2
    assert "--overwrite" in err(capsys) and (out / "keep.txt").exists()
    assert main(["data", "generate", "--out", str(out), "--n-images", "3", "--quiet", "--no-hf",
                 "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "scenes.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_n_images(tmp_path, capsys):
    assert main(["data", "generate", "--out", str(tmp_path / "o"), "--n-images", "0"]) == 2
    assert "n_images" in err(capsys)


def no_traceback_line(capsys):
    e = capsys.readouterr().err.strip()
    assert len(e.splitlines()) == 1 and "Traceback" not in e, e
    return e


def nothing_left(tmp_path, keep=()):
    """No output folder and no temporary sibling (``.NAME.*.tmp``) in ``tmp_path``."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in keep) == []


@pytest.mark.parametrize("n", ["0", "-3"])
def test_samples_per_image_below_one_is_refused(tmp_path, capsys, n):
    out = tmp_path / "ds"
    assert main(["data", "generate", "--out", str(out), "--n-images", "3", "--quiet", "--no-hf",
                 "--samples-per-image", n]) == 2
    e = no_traceback_line(capsys)
    assert "samples_per_image" in e and f"got {n}" in e
    assert nothing_left(tmp_path)


def test_from_context_unreadable_file_names_it(tmp_path, capsys):
    f = tmp_path / "latin1.txt"
    f.write_bytes(CONTEXT.replace("A dog and its owner.", "Un caf\xe9.").encode("latin-1"))
    assert main(["data", "from-context", str(f), "--kind", "detail"]) == 2
    e = no_traceback_line(capsys)
    assert "latin1.txt" in e and "UTF-8" in e
    assert main(["data", "from-context", str(tmp_path), "--kind", "detail"]) == 2
    assert "not a file" in no_traceback_line(capsys)


# ---------------------------------------------------------------- a chat endpoint that fails (loopback)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the loopback servers of test_chat_teacher
from test_chat_teacher import SECRET, completion, json_reply, redirect_to, running_servers  # noqa: E402

from vlkit.chat_client import ChatClientError  # noqa: E402
from vlkit.cli import build_parser  # noqa: E402


@pytest.fixture
def loopback():
    """``loopback(respond)``: a recording server on 127.0.0.1 (test_chat_teacher.Recorder), shut down after."""
    with running_servers() as start:
        yield start


@pytest.fixture
def redirecting(loopback, monkeypatch):
    """(endpoint A that answers 302 to B, server B that would accept anything)."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    other = loopback(json_reply(completion("Question: What is it?\nAnswer: A dog.")))
    return loopback(redirect_to(other.url + "/v1/chat/completions", 302)), other


def chat_argv(command, tmp_path, endpoint):
    chat = ["--teacher", "chat", "--base-url", endpoint.url + "/v1", "--model", "m"]
    if command == "generate":
        return ["data", "generate", "--out", str(tmp_path / "ds"), "--n-images", "2", "--quiet",
                "--no-hf", "--samples-per-image", "1", *chat]
    f = tmp_path / "ctx" / "park.txt"
    f.parent.mkdir(exist_ok=True)
    f.write_text(CONTEXT)
    return ["data", "from-context", str(f), "--kind", "conversation", *chat]


def test_generate_on_a_failing_endpoint_writes_nothing(tmp_path, redirecting):
    # The command itself (whatever the CLI does with the error): the ServiceError propagates and
    # no dataset, temporary folder or request to the other host is left behind.
    a, other = redirecting
    args = build_parser().parse_args(chat_argv("generate", tmp_path, a))
    with pytest.raises(ChatClientError, match="redirect"):
        args.func(args)
    assert nothing_left(tmp_path) and other.requests == [] and len(a.requests) == 1
    # An existing dataset is kept as it was when --overwrite meets a failing endpoint.
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    args = build_parser().parse_args(chat_argv("generate", tmp_path, a) + ["--overwrite"])
    with pytest.raises(ChatClientError):
        args.func(args)
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["keep.txt"] and nothing_left(tmp_path, {"ds"})


@pytest.mark.parametrize("command", ["generate", "from-context"])
def test_cli_failing_endpoint_exits_1_with_one_line(tmp_path, capsys, redirecting, command):
    # vlkit.cli.main prints a vlkit.errors.ServiceError (here a ChatClientError) as one line, exit 1.
    a, other = redirecting
    assert main(chat_argv(command, tmp_path, a)) == 1
    cap = capsys.readouterr()
    e = cap.err.strip()
    assert len(e.splitlines()) == 1 and "Traceback" not in e, e
    assert e.startswith("vlkit data: error: ") and "redirect" in e and SECRET not in e
    assert cap.out == "" and other.requests == []
    assert nothing_left(tmp_path, {"ctx"})


def test_from_context_reply_out_of_format_exits_1_and_prints_no_record(tmp_path, capsys, loopback, monkeypatch):
    # The endpoint's fault, not the file's: a ServiceError (exit 1), not a UserError (exit 2).
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    a = loopback(json_reply(completion("Sure! Here is a conversation about the image.")))
    assert main(chat_argv("from-context", tmp_path, a)) == 1
    cap = capsys.readouterr()
    assert len(cap.err.strip().splitlines()) == 1 and "park.txt" in cap.err and "expected format" in cap.err
    assert cap.out == "" and len(a.requests) == 1
