"""The lessons in a real browser: JupyterLab served locally, driven by Debian's Chromium.

For notebooks 01 and 02: open the notebook in a fresh workspace, run every cell, check that
no cell raised, then move one slider through its readout (type a value, Enter) and check
that the figure under it really changed (its PNG bytes differ). Screenshots go to
``tests/browser/artifacts/`` (ignored by git) for a person to look at.

Runs when ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` Python
package are present; skipped otherwise. Never downloads a browser. The notebooks are
copied to a temporary folder first, so the run cannot touch the committed ones.
"""

from __future__ import annotations

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

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RUN_ALL_TIMEOUT_MS = 600_000  # notebook 02 in fast mode takes well under a minute; leave room on a busy CI box


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop a process group we started (by its own id), politely first."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 with a random token and throwaway config/data/runtime folders."""
    base = tmp_path_factory.mktemp("lab")
    for folder in ("notebooks", "assets"):
        shutil.copytree(ROOT / folder, base / folder)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "FL_LAB_FAST": "1", "JUPYTER_CONFIG_DIR": str(base / "config"),
           "JUPYTER_DATA_DIR": str(base / "data"), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "IPYTHONDIR": str(base / "ipython"), "MPLCONFIGDIR": str(base / "mpl")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={base / 'notebooks'}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(base / "server.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n"
                                       f"{(base / 'server.log').read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url, token
    finally:
        _stop(server)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()  # Playwright stops the browser process it started, by its own handle


def _open_and_run_all(browser, lab, notebook: str):
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    workspace = f"test-{notebook.split('_')[0]}-{secrets.token_hex(4)}"
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=120_000)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.set_default_timeout(RUN_ALL_TIMEOUT_MS)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # run-all resolves when the last cell is queued; wait until every code cell has a count and the kernel rests.
    page.wait_for_function(
        """() => {
            const panel = window.jupyterapp.shell.currentWidget;
            const cells = Array.from(panel.content.model.cells);
            const done = cells.every(c => c.type !== 'code' || c.executionCount !== null);
            return done && panel.sessionContext.session.kernel.status === 'idle';
        }""", timeout=RUN_ALL_TIMEOUT_MS, polling=1000)
    errors = page.evaluate(
        """() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells).flatMap((cell, i) =>
            cell.type !== 'code' ? [] : Array.from({length: cell.outputs.length}, (_, j) => cell.outputs.get(j))
                .filter(o => o.type === 'error').map(o => `cell ${i}: ${o.toJSON().ename}: ${o.toJSON().evalue}`))""")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{notebook}.png"), full_page=False)
    assert errors == [], f"{notebook}: cells raised errors: {errors}"
    # The kit's overrides.json (Makefile) answers JupyterLab's news question for the learner.
    assert page.get_by_text("official Jupyter news").count() == 0, "JupyterLab asks about its news feed"
    return page


def _move_slider_and_compare(page, notebook: str, label: str, value: str) -> None:
    """Type ``value`` into the readout of the first slider labelled ``label``; its explorer's image must change."""
    labelled = page.locator(".widget-slider", has=page.locator("label", has_text=label))
    explorer = page.locator(".widget-vbox", has=labelled).first  # sliders + the figure they drive
    explorer.scroll_into_view_if_needed()  # JupyterLab renders only the cells in view
    slider = explorer.locator(".widget-slider", has=page.locator("label", has_text=label)).first
    image = explorer.locator("img").first
    before = image.get_attribute("src")
    assert before and before.startswith("data:image/png"), "the explorer shows no PNG figure"
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "([el, old]) => { const img = el.querySelector('img'); return img && img.src !== old; }",
        arg=[explorer.element_handle(), before], timeout=60_000)
    after = explorer.locator("img").first.get_attribute("src")
    assert readout.inner_text().strip() == value
    assert after != before, "the figure did not change"
    explorer.screenshot(path=str(ARTIFACTS / f"{notebook}-{label}-{value}.png"))


def test_notebook_01_runs_and_gamma_slider_redraws(browser, lab):
    page = _open_and_run_all(browser, lab, "01_focal_loss.ipynb")
    _move_slider_and_compare(page, "01_focal_loss.ipynb", "γ", "0.50")
    page.close()


def test_notebook_02_runs_and_iou_slider_redraws(browser, lab):
    page = _open_and_run_all(browser, lab, "02_anchors.ipynb")
    _move_slider_and_compare(page, "02_anchors.ipynb", "fg", "0.70")
    page.close()
