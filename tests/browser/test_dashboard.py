"""The dashboard in a real browser (Debian's Chromium driven by Playwright) during real Flower runs.

1. ``python -m fl_server ... dashboard.enabled=true``: open the printed URL while the run trains, watch the
   accuracy chart gain points live (no reload), open the nodes and chain pages.
2. ``python -m fl_server.api``: start a run from the Settings form with the token, see it train.

Screenshots land in outputs/browser/ (test artifacts). Skipped only when /usr/bin/chromium is absent
(scripts/setup.sh installs it when run as root).
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from fl_server.api.runs import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = REPO_ROOT / "outputs" / "browser"
TOKEN = "browser-test-token-0123456789"
ROUNDS = 3
SMALL_RUN = ["dataset=digits", "model=mlp", "num_miners=2", f"rounds={ROUNDS}", "secagg=none",
             "dgc.enabled=false", "chain=none", "dataset.max_samples_per_miner=300"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium "
                       "(apt-get install -y --no-install-recommends chromium; scripts/setup.sh does it as root)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> dict[str, str]:
    out = dict(os.environ, PYTHONUNBUFFERED="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    out["MODELMINE_API_TOKEN"] = TOKEN
    return out


def start(argv: list[str], log: Path) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """Start a process whose output lines are copied to ``log`` and to the returned queue."""
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with open(log, "w") as fh:
            for line in proc.stdout:  # type: ignore[union-attr]
                fh.write(line)
                fh.flush()
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for_url(proc: subprocess.Popen[str], lines: queue.Queue[str], log: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        match = re.search(r"dashboard: (http://\S+/)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no dashboard URL printed; log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


def new_page(browser: object) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # refused requests (the tests provoke some) log "Failed to load resource"; anything else is a bug
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    return page, errors


def points(page: Page) -> int:
    return int(page.evaluate("() => +(document.querySelector('#chart-accuracy')?.dataset.points ?? -1)"))


def test_live_dashboard_of_a_training_run(browser: object, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "fl_server", *SMALL_RUN, "dashboard.enabled=true", f"dashboard.port={port}",
            "dashboard.linger_s=120", f"hydra.run.dir={tmp_path / 'run'}", f"data_root={tmp_path / 'data'}"]
    proc, lines = start(argv, log)
    try:
        url = wait_for_url(proc, lines, log)
        assert url == f"http://127.0.0.1:{port}/"
        page, errors = new_page(browser)
        page.goto(url + "#/overview")
        page.wait_for_selector("#chart-accuracy", timeout=60_000)
        page.evaluate("() => { window.__loadMarker = 42; }")
        seen = [points(page)]
        deadline = time.monotonic() + 300
        while seen[-1] < ROUNDS and time.monotonic() < deadline:
            assert proc.poll() is None, f"the run died:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
            now = points(page)
            if now != seen[-1]:
                seen.append(now)
                if now == 1:
                    page.screenshot(path=str(SHOTS / "overview-training.png"), full_page=True)
        assert seen[-1] == ROUNDS, f"chart points seen {seen}; log:\n{log.read_text()[-3000:]}"
        assert seen[0] < ROUNDS and seen == sorted(seen), seen  # it gained points while we watched
        assert page.evaluate("() => window.__loadMarker") == 42  # live updates, not reloads
        page.wait_for_function(f"() => document.querySelector('[data-testid=round-progress]')?.textContent"
                               f".trim() === '{ROUNDS} / {ROUNDS}'", timeout=30_000)
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

        page.click("nav a[data-page=nodes]")
        page.wait_for_selector("[data-testid=nodes] tbody tr", timeout=30_000)
        rows = page.locator("[data-testid=nodes] tbody tr")
        assert rows.count() == 2
        assert page.locator("[data-testid=nodes] .history span.acc").count() >= 2  # accepted submissions drawn
        page.screenshot(path=str(SHOTS / "nodes.png"), full_page=True)

        page.click("nav a[data-page=chain]")
        page.wait_for_selector("[data-testid=blocks]", timeout=30_000)
        assert page.locator("[data-testid=empty-chain]").count() == 1  # chain=none: an explained empty state
        page.screenshot(path=str(SHOTS / "chain.png"), full_page=True)

        with page.expect_download() as download:
            page.click("nav a[data-page=overview]")
            page.wait_for_selector("[data-png=chart-accuracy]")
            page.click("[data-png=chart-accuracy]")
        assert download.value.suggested_filename == "chart-accuracy.png"
        assert not errors, errors
    finally:
        stop(proc)


def test_start_a_run_from_the_settings_form(browser: object, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    proc, lines = start([sys.executable, "-m", "fl_server.api", "--db", str(tmp_path / "runs.db"), "--port", str(port),
                         "--runs-dir", str(tmp_path / "api_runs")], log)
    try:
        url = wait_for_url(proc, lines, log, timeout=60)
        page, errors = new_page(browser)
        page.goto(url + "#/overview")
        page.wait_for_selector("[data-testid=empty-overview]")  # an empty database explains itself
        page.goto(url + "#/settings")
        form = page.locator("[data-testid=run-form]")
        form.locator("input[name=num_miners]").fill("2")
        form.locator("input[name=per_round]").fill("5")  # more than miners: refused by the API
        page.fill("[data-testid=token]", TOKEN)
        page.click("[data-testid=start-run]")
        page.wait_for_function("() => document.querySelector('[data-testid=run-form-error]').textContent.includes('exceeds')")
        form.locator("input[name=per_round]").fill("0")
        form.locator("input[name=rounds]").fill("2")
        form.locator("select[name=dataset]").select_option("digits")
        form.locator("select[name=model]").select_option("mlp")
        page.screenshot(path=str(SHOTS / "settings.png"), full_page=True)
        page.click("[data-testid=start-run]")
        page.wait_for_url(re.compile(r".*#/overview$"))
        page.wait_for_function("() => document.querySelector('[data-testid=round-progress]')?.textContent.trim() === '2 / 2'",
                               timeout=300_000)
        assert points(page) == 2
        page.screenshot(path=str(SHOTS / "overview-from-settings.png"), full_page=True)
        assert not errors, errors
    finally:
        stop(proc)


def test_chain_tasks_and_miner_pages_show_recorded_chain_data(browser: object, tmp_path: Path) -> None:
    """The pages a chain run fills (its events written through the real bus into a database), without
    training: candidate blocks, votes, balances, a task's timeline, a miner's view, the task filter and a
    publish request the server refuses with a reason."""
    from fl_server.rundb import RunDB
    from tests.fl_server.test_rundb import ADDR_A, feed

    db = RunDB.open(tmp_path / "chain.db")
    feed(db)
    db.close()
    port = free_port()
    log = tmp_path / "api.log"
    proc, lines = start([sys.executable, "-m", "fl_server.api", "--db", str(tmp_path / "chain.db"), "--port", str(port),
                         "--runs-dir", str(tmp_path / "api_runs")], log)
    try:
        url = wait_for_url(proc, lines, log, timeout=60)
        page, errors = new_page(browser)
        page.goto(url + "#/chain")
        page.wait_for_selector("[data-testid=blocks] tbody tr")
        assert page.locator("[data-testid=votes] tbody tr").count() == 2
        assert "1.500000 ETH" in page.locator("[data-testid=balances]").inner_text()  # claimable
        page.screenshot(path=str(SHOTS / "chain-recorded.png"), full_page=True)
        page.click("[data-testid=chain-tasks] tbody tr")
        page.wait_for_selector("[data-testid=timeline]")
        timeline = page.locator("[data-testid=timeline]").inner_text()
        assert "published on chain" in timeline and "block finalized" in timeline and "reward" in timeline
        page.screenshot(path=str(SHOTS / "task.png"), full_page=True)
        page.goto(url + f"#/miners/{ADDR_A}")
        page.wait_for_selector("[data-testid=claimable]")
        assert page.locator("[data-testid=claimable]").inner_text() == "1.500000 ETH"
        page.screenshot(path=str(SHOTS / "miners.png"), full_page=True)
        page.goto(url + "#/tasks")
        page.wait_for_selector("[data-testid=task-status]")
        page.select_option("[data-testid=task-status]", "completed")
        page.wait_for_selector("[data-testid=tasks] .empty")  # filtered to nothing, and says so
        page.goto(url + "#/settings")
        page.fill("[data-testid=token]", TOKEN)
        page.click("#save-token")
        page.goto(url + "#/tasks")
        page.click("#task-form button[type=submit]")
        page.wait_for_function("() => document.querySelector('[data-testid=task-form-error]').textContent"
                               ".includes('not published')")
        page.wait_for_selector("[data-testid=tasks] tbody tr >> text=unpublished")  # the request is listed
        page.screenshot(path=str(SHOTS / "tasks.png"), full_page=True)
        assert not errors, errors
    finally:
        stop(proc)
