"""The papermill pipeline runner: parameters checked, runs recorded, failures reported."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from vlkit import cli, errors, parameters, runs

PARAMS = 'profile = "full"\nseed = 0\nn = 3\n'
BODY = ("import random, vlkit\n"
        "random.seed(seed)\n"
        "vlkit.record('draw', random.random())\n"
        "vlkit.record('n', n)\n"
        "vlkit.record('profile', profile)\n")


def make_notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), first,
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def workbook(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    make_notebook(nbdir / "01_first.ipynb", PARAMS, BODY)
    make_notebook(nbdir / "02_second.ipynb", 'profile = "full"\nscale = 2.0\n',
                  "import vlkit\nvlkit.record('scaled', scale * 3)")
    return nbdir, tmp_path / "runs"


def test_parse_value_reads_papermill_style_literals():
    assert parameters.parse_value("3") == 3 and parameters.parse_value("0.5") == 0.5
    assert parameters.parse_value("true") is True and parameters.parse_value("None") is None
    assert parameters.parse_value("[1, 2]") == [1, 2] and parameters.parse_value("clip") == "clip"


def test_unknown_parameter_is_rejected_before_anything_runs(workbook, capsys):
    nbdir, runs_dir = workbook
    code = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbdir),
                     "--runs-dir", str(runs_dir), "-p", "n_imagez", "5"])
    assert code != 0
    assert "n_imagez" in capsys.readouterr().err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_notebook_without_parameters_cell_is_rejected(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "01_bare.ipynb")
    with pytest.raises(ValueError, match="parameters"):
        parameters.check_parameters([tmp_path / "01_bare.ipynb"], {"profile": "smoke"})


def test_parameters_go_only_to_notebooks_that_declare_them(workbook):
    nbdir, _ = workbook
    nbs = runs.discover(nbdir)
    per = parameters.check_parameters(nbs, {"profile": "smoke", "seed": 4, "scale": 1.5})
    assert per[nbs[0]] == {"profile": "smoke", "seed": 4}
    assert per[nbs[1]] == {"profile": "smoke", "scale": 1.5}


def test_only_selects_and_unknown_only_is_an_error(workbook):
    nbdir, _ = workbook
    assert [p.name for p in runs.discover(nbdir, ["2"])] == ["02_second.ipynb"]
    with pytest.raises(ValueError, match="07"):
        runs.discover(nbdir, ["07"])


@pytest.mark.slow
def test_run_records_metrics_and_same_seed_gives_same_metrics(workbook):
    nbdir, runs_dir = workbook
    first, rec1 = runs.run_pipeline("smoke", None, {"seed": 7, "n": 5}, nbdir, runs_dir)
    second, rec2 = runs.run_pipeline("smoke", None, {"seed": 7, "n": 5}, nbdir, runs_dir)
    assert first != second, "a run folder is never reused"
    assert rec1["status"] == "ok" and [n["status"] for n in rec1["notebooks"]] == ["ok", "ok"]
    m1 = {n["notebook"]: n["metrics"] for n in rec1["notebooks"]}
    m2 = {n["notebook"]: n["metrics"] for n in rec2["notebooks"]}
    assert m1 == m2
    assert m1["01_first.ipynb"]["n"] == 5 and m1["01_first.ipynb"]["profile"] == "smoke"
    assert m1["02_second.ipynb"]["scaled"] == 6.0
    on_disk = json.loads((first / "run.json").read_text())
    assert on_disk["profile"] == "smoke" and on_disk["parameters"] == {"seed": 7, "n": 5}
    assert on_disk["started"] and on_disk["ended"] and "commit" in on_disk["git"]
    assert all(n["seconds"] > 0 for n in on_disk["notebooks"])
    assert (first / "01_first.ipynb").exists() and (first / "01_first.metrics.json").exists()
    # a different seed changes the metric, so the equality above is not vacuous
    _, rec3 = runs.run_pipeline("smoke", ["01"], {"seed": 8}, nbdir, runs_dir)
    assert rec3["notebooks"][0]["metrics"]["draw"] != m1["01_first.ipynb"]["draw"]


@pytest.mark.slow
def test_failing_notebook_gives_nonzero_exit_and_recorded_error(tmp_path, capsys):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    make_notebook(nbdir / "01_ok.ipynb", 'profile = "full"\n', "x = 1")
    make_notebook(nbdir / "02_broken.ipynb", 'profile = "full"\n',
                  "y = 2", "raise ValueError('boom in cell')", "z = 3")
    make_notebook(nbdir / "03_never.ipynb", 'profile = "full"\n', "w = 4")
    code = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbdir),
                     "--runs-dir", str(tmp_path / "runs")])
    assert code == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["failed"]["notebook"] == "02_broken.ipynb"
    assert record["failed"]["ename"] == "ValueError" and "boom" in record["failed"]["evalue"]
    # cell 3 of the notebook (markdown, parameters, injected-parameters, y=2, raise): the
    # index points at the raising cell in the executed copy
    executed = nbformat.read(run_dir / "02_broken.ipynb", as_version=4)
    assert "raise ValueError" in executed.cells[record["failed"]["cell_index"]].source
    assert [n["notebook"] for n in record["notebooks"]] == ["01_ok.ipynb", "02_broken.ipynb"]
    assert "boom" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_over_its_time_limit_is_stopped(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    make_notebook(nbdir / "01_slow.ipynb", 'profile = "full"\n', "import time\ntime.sleep(120)")
    run_dir, record = runs.run_pipeline("smoke", None, {}, nbdir, tmp_path / "runs", timeout=8)
    assert record["status"] == "failed" and record["notebooks"][0]["status"] == "timeout"
    assert record["notebooks"][0]["seconds"] < 60


# --------------------------------------------------------------------------- bad input: one line, nothing made

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_parameter_of_the_wrong_type_is_refused_before_anything_runs(workbook, capsys):
    nbdir, runs_dir = workbook
    code = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbdir),
                     "--runs-dir", str(runs_dir), "-p", "seed", "abc"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "seed" in line and "'abc'" in line and "int" in line and "01_first.ipynb" in line
    assert not runs_dir.exists()


def test_parameter_values_must_fit_the_type_of_the_default(tmp_path):
    nb = make_notebook(tmp_path / "01_typed.ipynb",
                       'profile = "full"\ncount = 3\nratio = 0.5\nflag = False\ntag = "clip"\n'
                       'names = ["a"]\nanything = None\ncomputed = 2 ** 4\n')
    fits = {"count": 7, "ratio": 2, "flag": True, "tag": "siglip", "names": [1, 2],
            "anything": "x", "computed": "whatever"}
    for name, value in fits.items():
        assert parameters.check_parameters([nb], {"profile": "smoke", name: value})[nb][name] == value
    misfits = {"count": [True, 1.5, "3", None], "ratio": [True, "0.5"], "flag": [1, "yes"],
               "tag": [5, ["clip"]], "names": ["a", {"a": 1}]}
    for name, values in misfits.items():
        for value in values:
            with pytest.raises(errors.UserError) as e:
                parameters.check_parameters([nb], {"profile": "smoke", name: value})
            message = str(e.value)
            assert name in message and "01_typed.ipynb" in message and repr(value) in message
    with pytest.raises(errors.UserError, match="expects an int"):
        parameters.check_parameters([nb], {"profile": "smoke", "count": "x"})


def test_profile_as_a_parameter_is_refused_in_favour_of_the_profile_option(workbook, capsys):
    nbdir, runs_dir = workbook
    code = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbdir),
                     "--runs-dir", str(runs_dir), "-p", "profile", "full"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "-p profile full" in line and "--profile" in line
    assert not runs_dir.exists()
    assert cli.main(["run", "--dry-run", "--notebooks", str(nbdir), "-p", "profile", "smoke"]) == 2


def test_runs_dir_that_is_a_file_is_a_one_line_error(workbook, capsys):
    nbdir, _ = workbook
    a_file = nbdir.parent / "a-file"
    a_file.write_text("keep me")
    for runs_dir in (a_file, a_file / "runs"):
        code = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbdir),
                         "--runs-dir", str(runs_dir)])
        assert code == 2
        line = _one_error_line(capsys)
        assert str(runs_dir) in line and "file" in line
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("value", ["-5", "0", "nan"])
def test_timeout_must_be_positive(workbook, capsys, value):
    nbdir, runs_dir = workbook
    code = cli.main(["run", "--profile", "smoke", "--notebooks", str(nbdir),
                     "--runs-dir", str(runs_dir), "--timeout", value])
    assert code == 2
    line = _one_error_line(capsys)
    assert f"--timeout {value}" in line
    assert not runs_dir.exists()


def test_service_error_is_one_line_and_exit_status_1(monkeypatch, capsys):
    from vlkit.commands import run as run_command

    def failing(args):
        raise errors.ServiceError("http://127.0.0.1:9/v1 answered 502 after 3 tries:\n<html>\nbad gateway")

    monkeypatch.setattr(run_command, "main", failing)
    assert cli.main(["run"]) == 1
    line = _one_error_line(capsys)
    assert "http://127.0.0.1:9/v1" in line and "bad gateway" in line and "Traceback" not in line
    # the CLI's UserError is the one every module raises (exit 2)
    assert cli.UserError is errors.UserError

    def bad_input(args):
        raise errors.UserError("--thing 7: no such thing")

    monkeypatch.setattr(run_command, "main", bad_input)
    assert cli.main(["run"]) == 2
    assert "--thing 7" in _one_error_line(capsys)
