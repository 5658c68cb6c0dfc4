"""The MLflow UI as a user sees it: ``sde-search ui`` after a real search, opened in headless Chromium.

Needs the ``playwright`` package and a Chromium at /usr/bin/chromium (Debian's; ``SDE_CHROMIUM`` names another;
Playwright's own browser download is never used). Without them the test skips, unless ``SDE_REQUIRE_BROWSER=1``,
where it fails. Screenshots go to ``$SDE_SCREENSHOTS`` when set (``docs/img`` holds the committed ones), else to
the test's temporary folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("SDE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # the UI's first load on a busy 2-core machine
CHARTS = "^(score|kappa|accuracy|train_loss|format_error_rate|baseline_fixed)$"  # a trial's charts in the screenshot
ML_VIEW = "?workflowType=machine_learning"  # a run's page opened from the runs table falls back to the GenAI sidebar


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Skips (or fails, with ``SDE_REQUIRE_BROWSER=1``) before the search runs when no browser can be driven."""
    missing = [what for what, ok in (("the python package playwright", importlib.util.find_spec("playwright")),
                                     (f"Chromium at {CHROMIUM}", CHROMIUM.exists())) if not ok]
    if missing:
        why = f"needs {' and '.join(missing)}"
        if os.environ.get("SDE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why} (SDE_REQUIRE_BROWSER=1)")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check: Callable[[], Any], what: str, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = check()
            if value:
                return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _best_effort(step: Callable[[], Any]) -> None:
    """A cosmetic step for the screenshots (columns, widths): the assertions never depend on it."""
    from playwright.sync_api import Error

    with contextlib.suppress(Error):
        step()


def test_the_ui_shows_the_search_by_design_with_charts_and_optuna_plots(
        browser_ready: None, small_search: tuple[Path, Any], tmp_path: Path) -> None:
    import psutil
    from playwright.sync_api import sync_playwright

    from sde_search.analysis import load_rows

    runs, _ = small_search
    rows = load_rows(runs / "it" / "trials.json")
    designs = sorted({r.design.short() for r in rows})
    best_design = max((r for r in rows if r.status == "full"), key=lambda r: r.value("score")).design.short()
    shots = Path(os.environ.get("SDE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "sde_search.cli", "ui", "--runs-dir", str(runs), "--port",
                               str(port)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                     "PYTHONUNBUFFERED": "1"})
    server: list[psutil.Process] = []
    try:
        url = _wait_for(lambda: (m := re.search(r"masa_fixed: (http://\S+)", log.read_text())) and m.group(1),
                        "the runs view's address in the output of sde-search ui")
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "workflowType=machine_learning" in url
        _wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read() == b"OK",
                  "the MLflow server")
        server = psutil.Process(ui.pid).children(recursive=True)
        outside: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 820})
            page.set_default_timeout(WAIT_MS)
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (f"http://127.0.0.1:{port}/", "blob:", "data:", "about:")) else None)

            # 1. The printed address opens the runs table: the parent run, and its trials named by design.
            page.goto(url)
            parent = page.get_by_role("link", name="it", exact=True)
            parent.wait_for()
            _best_effort(lambda: page.get_by_role("button", name="Close").first.click(timeout=3000))  # assistant
            _best_effort(lambda: _show_columns(page, ["Dataset", "Source", "Models"],
                                               ["score", "score_ood", "progress", "budget"]))
            page.locator('[role="row"]', has=parent).locator(
                'button[data-component-id*="runnamecellrenderer"]').first.click()  # expands the parent's trials
            for design in designs:
                page.get_by_role("link", name=design, exact=True).wait_for()
            assert not page.get_by_role("link", name=re.compile(r"^trainable_")).count()
            _best_effort(lambda: page.locator('.ag-header-cell[col-id="attributes.`Run Name`"] '
                                              ".ag-header-cell-resize").dblclick(timeout=3000))  # fit the names
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "mlflow_runs_table.png"))

            # 2. One trial's metric charts: the score's chart holds a line.
            best = page.get_by_role("link", name=best_design, exact=True)
            trial_href = best.get_attribute("href")
            assert trial_href
            page.goto(urljoin(page.url, trial_href.split("?")[0] + "/model-metrics" + ML_VIEW))
            page.set_viewport_size({"width": 1440, "height": 1000})
            page.get_by_placeholder("Search metric charts").fill(CHARTS)
            card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                has=page.get_by_text("kappa", exact=True))
            card.locator("svg.main-svg .scatterlayer .trace").first.wait_for()
            assert card.count() == 1
            assert page.get_by_text(best_design, exact=True).count() >= 1  # the run's title: its design
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "mlflow_trial_charts.png"))

            # 3. The parent run's Optuna plots render inside MLflow's artifact viewer.
            page.goto(url)
            page.get_by_role("link", name="it", exact=True).wait_for()
            parent_href = page.get_by_role("link", name="it", exact=True).get_attribute("href")
            assert parent_href and trial_href and parent_href != trial_href
            page.goto(urljoin(page.url, parent_href.split("?")[0] + "/artifacts/plots/optuna.html" + ML_VIEW))
            page.locator("iframe").first.wait_for()
            frame = page.frame_locator("iframe").first
            frame.locator(".plotly-graph-div svg.main-svg").first.wait_for()
            assert frame.locator(".plotly-graph-div").count() >= 2
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "mlflow_optuna_plot.png"))
            browser.close()
        assert outside == [], outside[:5]  # offline: nothing fetched from outside this machine (no CDN, telemetry)
    finally:
        ui.send_signal(signal.SIGTERM)  # as a user's kill: the CLI passes it on to the server and its workers
        try:
            ui.wait(timeout=60)
        finally:
            for proc in [psutil.Process(ui.pid)] if ui.poll() is None else []:
                proc.kill()
            _, alive = psutil.wait_procs(server, timeout=15)
            for proc in alive:
                proc.kill()
    assert ui.returncode == 0, log.read_text()[-2000:]
    assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens on the port any more
    for name in ("mlflow_runs_table", "mlflow_trial_charts", "mlflow_optuna_plot"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


def _show_columns(page: Any, hide: list[str], show: list[str]) -> None:
    """Picks the runs table's columns in its Columns menu (for the screenshot)."""
    page.get_by_role("button", name="Columns").click(timeout=3000)
    search = page.get_by_placeholder("Search columns")
    for name in hide + show:
        search.fill(name)
        page.get_by_role("dialog").locator(".du-bois-light-tree-treenode").filter(
            has=page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{name}$"))).first.locator(
            ".du-bois-light-tree-checkbox").click(timeout=3000)
    page.keyboard.press("Escape")
