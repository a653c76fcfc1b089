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
