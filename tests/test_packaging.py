"""The set-up files agree with each other: pyproject, environment.yml, Makefile, CI."""
from __future__ import annotations

import re
import tomllib

import yaml

from vlkit import paths

ROOT = paths.repo_root()


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin(requirements):
    pins = [r for r in requirements if re.match(r"torch\s*==", r)]
    assert len(pins) == 1, f"expected one torch pin, got {pins}"
    return pins[0].replace(" ", "")


def test_torch_is_pinned_everywhere_to_the_same_release():
    # An unpinned torch pulls a multi-GB CUDA build; every installer must use the pin.
    pin = torch_pin(pyproject()["project"]["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert torch_pin(pip_section) == pin
    assert f'"{pin}"' in (ROOT / "Makefile").read_text()


def test_environment_yml_installs_this_package_with_dev_extra_and_a_supported_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    major_minor = tuple(int(x) for x in python.split("=")[1].split(".")[:2])
    required = pyproject()["project"]["requires-python"]
    assert major_minor >= tuple(int(x) for x in required.lstrip(">=").split(".")[:2])
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[dev]" in pip_section, "environment.yml must pip-install this package (pyproject is the one list)"
    # nothing else: a second list of dependencies would drift from pyproject
    assert all(p.startswith("torch==") or p == "-e .[dev]" for p in pip_section)


def test_required_packages_are_declared():
    deps = " ".join(pyproject()["project"]["dependencies"])
    for name in ("transformers", "accelerate", "peft", "bitsandbytes", "tokenizers", "datasets",
                 "papermill", "jupyterlab", "ipywidgets", "ipykernel", "matplotlib", "seaborn",
                 "tqdm", "pillow", "safetensors"):
        assert re.search(rf"\b{name}\b", deps), name


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_browser_test_gets_chromium_and_playwright_and_lab_gets_the_widgets_extension():
    from importlib.metadata import requires
    dev = " ".join(pyproject()["project"]["optional-dependencies"]["dev"])
    assert re.search(r"\bplaywright\b", dev)
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bchromium\b", make, re.M), "make test must install Chromium first"
    assert re.search(r"^chromium:\n(\t.*\n)*\t.*apt-get install -y chromium", make, re.M)
    assert "make chromium" in (ROOT / ".ci" / "run").read_text()
    # JupyterLab renders widgets through jupyterlab_widgets, which ipywidgets (a dependency) requires
    assert any(r.replace("-", "_").startswith("jupyterlab_widgets") for r in requires("ipywidgets"))


def test_atomic_writes_leave_normal_permissions(tmp_path):
    import os
    import stat

    from vlkit import atomic
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    with atomic.atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
