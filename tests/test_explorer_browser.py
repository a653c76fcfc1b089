"""The attention explorer in a real browser: JupyterLab on loopback, Chromium driven by Playwright.

A JupyterLab server (its own root, settings, config and data folders, a token and a free port) opens
``tests/browser/attention_explorer.ipynb``, which builds the explorer on a tiny random model; the test runs
it in Chromium, checks that the widget rendered, moves the layer slider with the keyboard, checks that the
picture changed (its pixels differ) and that the browser console logged no error, and shuts the server down,
also when something failed. Screenshots go to ``test-artifacts/`` (gitignored).

Chromium is the Debian package (``apt-get install -y chromium``; ``make test`` installs it where it is
missing) and Playwright comes from PyPI (the ``dev`` extra); Playwright never downloads a browser here, it
drives the system one through ``executable_path``. Without either the test fails, saying how to install it:
a skipped browser test would read as a passing one.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent
NOTEBOOK = HERE / "browser" / "attention_explorer.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("VLKIT_CHROMIUM", "/usr/bin/chromium")
INSTALL = ("install Chromium with `apt-get install -y chromium` (Debian; `make test` does this when it is missing, "
           "or set VLKIT_CHROMIUM to a Chromium executable) and Playwright with `pip install -e '.[dev]'`; never "
           "`playwright install`: the test drives the system browser")
# A closed network refuses Chromium's own background connections (updates, sync, field trials) and it logs
# them as errors; these flags keep it from trying. A fresh profile comes with every Playwright launch.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# JupyterLab settings for a quiet, reproducible page: no news or update checks (network calls, a toast over the
# output), no autosave into the copied notebook
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


@pytest.fixture
def sync_playwright():
    """Playwright's entry point, once both it and Chromium are there (checked before a server starts)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed: {INSTALL}", pytrace=False)
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL}", pytrace=False)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook: (base url, token, notebook name); its log
    is server.log in the test's tmp_path."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = tmp_path / "settings"
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           # the kernel imports this checkout's vlkit, whatever the environment has installed
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           # window.jupyterapp: the test runs the notebook through JupyterLab's own command
           "--LabApp.expose_app_in_browser=True",
           # no extension listing from PyPI (a network call), no terminals; root: CI machines run as root
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False", "--allow-root"]
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        # its own process group: the kernels it starts go down with it if it must be killed
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _request(f"{base}/api/status?token={token}") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token, NOTEBOOK.name
    finally:
        _shut_down(server, base, token)


def _shut_down(server: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to stop (it shuts its kernels down), then end its process group if it does not."""
    try:
        _request(f"{base}/api/shutdown?token={token}", method="POST")
    except OSError:
        pass
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_explorer_renders_in_jupyterlab_and_its_layer_slider_redraws(sync_playwright, lab):
    base, token, name = lab
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            try:
                _run_and_check(page)
            finally:
                page.screenshot(path=str(ARTIFACTS / "attention_explorer_page.png"))
        finally:
            browser.close()
    assert not errors, "the browser console logged errors:\n" + "\n".join(errors)


def _run_and_check(page) -> None:
    # the notebook panel is open and its kernel idle, then JupyterLab's own "run all cells"
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.kernelDisplayStatus === 'idle'; }", timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    picture = page.locator("img.widget-image")
    # a traceback (or anything on stderr) renders as this output type: stop waiting for the picture then
    stderr = "[data-mime-type='application/vnd.jupyter.stderr']"
    page.wait_for_function(
        "(stderr) => { const i = document.querySelector('img.widget-image');"
        " return (i && i.complete && i.naturalWidth > 0) || document.querySelector(stderr); }",
        arg=stderr, timeout=120_000)
    assert page.locator(stderr).count() == 0, "the notebook wrote to stderr:\n" + "\n".join(
        page.locator(stderr).all_inner_texts())
    widget = page.locator(".jp-OutputArea-output .widget-vbox").first
    assert picture.count() == 1 and widget.is_visible()
    readout = page.locator(".widget-slider .widget-readout").first
    before_layer, before_src = readout.inner_text(), picture.get_attribute("src")
    before = picture.screenshot()
    widget.screenshot(path=str(ARTIFACTS / "attention_explorer.png"))
    # the slider starts at the last layer: one step down, by keyboard, as a user would
    page.locator(".widget-slider .noUi-handle").first.focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("(old) => document.querySelector('img.widget-image').src !== old", arg=before_src,
                           timeout=30_000)
    page.wait_for_function("() => document.querySelector('img.widget-image').complete")
    assert int(readout.inner_text()) == int(before_layer) - 1
    after = picture.screenshot()
    (ARTIFACTS / "attention_explorer_layer_down.png").write_bytes(after)
    a, b = _pixels(before), _pixels(after)
    assert a.shape == b.shape and (a != b).any(axis=-1).mean() > 0.01, "moving the layer slider left the picture as it was"
