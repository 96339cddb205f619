"""The MLflow UI in a real browser after a real sweep: headless Chromium (Debian's `chromium` package, which
.ci/run installs with apt-get) driven by Playwright, against the server `rgsweep ui` starts.

It opens the address `rgsweep ui` prints and checks what a person sees: the training view (not the GenAI
overview), the children under the parent in their architecture's colour, the Dataset column filled, and
on the parent's page the description with the results table and the gen_gap figure. It then follows the
README's recipe for "compare gen_gap against label noise per architecture" and counts its actions.
Screenshots go to tests/artifacts/browser/ (git-ignored); the test prints where.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from rgsweep.palette import arch_color
from rgsweep.sweep import run_sweep
from rgsweep.sweepfile import expand, load_spec

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent / "artifacts" / "browser"
UI_START_S = 120  # mlflow server start-up: ~15 s on an idle machine
PAGE_S = 60  # the UI's first render (a large JavaScript bundle) and its REST calls
RECIPE_MAX_ACTIONS = 5


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install -y chromium`, as root; "
                    ".ci/run does this)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: `pip install -e '.[dev]'` (never `playwright install`)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory, ray_session):
    """A real sweep in its own SQLite store: digits, 2 architectures x 2 label-noise levels, 2 epochs."""
    _require_browser()
    root = tmp_path_factory.mktemp("browser")
    path = root / "ui-browser.yaml"
    path.write_text(yaml.safe_dump({
        "name": "ui-browser", "description": "Digits, mlp1x512 and cnn, label noise 0 and 1 (the browser test).",
        "base": {"dataset": "digits", "epochs": 2, "lr": 0.05, "device": "cpu", "preprocess": "paper"},
        "grid": {"arch": ["mlp1x512", "cnn"], "condition": [{"label_noise": 0.0}, {"label_noise": 1.0}]},
    }))
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    plan = expand(load_spec(path), path)
    code, _ = run_sweep(plan, tracking_uri=uri, verbose=0)
    assert code == 0
    return uri, [t.name for t in plan.trials]


@pytest.fixture(scope="module")
def ui_address(sweep_store, tmp_path_factory):
    """`rgsweep ui` on a free port: the address it prints for the sweep's experiment."""
    uri, _ = sweep_store
    port = _free_port()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with log.open("w") as out:  # own session: the server and its workers are ours to stop
        proc = subprocess.Popen([sys.executable, "-m", "rgsweep.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + UI_START_S
        while True:  # bounded poll of the health endpoint; a crashed server ends the wait too
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"rgsweep ui exited with {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"mlflow server not up after {UI_START_S}s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        found = re.search(r"^\s+ui-browser: (\S+)$", log.read_text(), re.M)
        assert found, log.read_text()
        yield found.group(1)
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the whole session `rgsweep ui` leads (it and the mlflow server under it), SIGKILL to
    whatever is left after `timeout` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def page(capsys, request):
    _require_browser()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nbrowser screenshots: {SHOTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-dev-shm-usage"])
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.set_default_timeout(PAGE_S * 1000)
        try:
            yield pg
        finally:  # what the page showed last, pass or fail
            pg.screenshot(path=str(SHOTS / f"{request.node.name[5:40]}-last.png"))
            browser.close()


def _name_cell(page, name: str):
    return page.locator("[col-id='attributes.`Run Name`']", has=page.get_by_role("link", name=name, exact=True))


def _cell(page, name: str, column: str):
    """A run's cell in another column: AG Grid draws the pinned columns (the run name) and the others in
    separate row elements that share a row-index."""
    row = page.locator("[role=row]", has=_name_cell(page, name)).first
    return page.locator(f"[role=row][row-index='{row.get_attribute('row-index')}'] [col-id='{column}']").first


def test_the_printed_address_shows_the_sweep_as_a_person_should_see_it(ui_address, sweep_store, page):
    uri, names = sweep_store
    assert ui_address.endswith("/runs?workflowType=machine_learning") and "127.0.0.1" in ui_address
    page.goto(ui_address)
    page.get_by_text("sweep-ui-browser", exact=True).wait_for()
    # The training view: its navigation (Model registry) rather than the GenAI overview's (Evaluation runs).
    assert "workflowType=machine_learning" in page.url
    body = page.inner_text("body")
    assert "Model registry" in body and "Evaluation runs" not in body
    assert page.get_by_text("Digits, mlp1x512 and cnn, label noise 0 and 1 (the browser test).").count() == 1
    page.screenshot(path=str(SHOTS / "1-runs-table.png"))

    # The children under the parent (one click on its expander), each in its architecture's colour,
    # with the Dataset column filled.
    _name_cell(page, "sweep-ui-browser").locator("button[data-component-id*='runnamecellrenderer']").click()
    for name in names:
        cell = _name_cell(page, name)
        cell.wait_for()
        colour = cell.locator("[data-testid=experiment-view-table-run-color] input").get_attribute("value")
        assert colour == arch_color(name.split("-")[0]), name
        assert "digits/train" in _cell(page, name, "attributes.`Dataset`").inner_text(), name
    assert _cell(page, "sweep-ui-browser", "attributes.`Dataset`").inner_text().strip() == "-"
    page.screenshot(path=str(SHOTS / "2-children-expanded.png"))


def test_compare_gen_gap_against_label_noise_per_architecture_in_at_most_five_actions(ui_address, page):
    """The README's recipe, action by action, from the printed address."""
    page.goto(ui_address)
    actions = 0
    page.get_by_text("sweep-ui-browser", exact=True).click()  # 1: the sweep's parent run
    actions += 1
    page.locator("[data-testid=show-comment-toggle]").click()  # 2: "Show more" of the description
    actions += 1
    description = page.locator("[data-testid=note-editor-preview-content]")
    figure = description.locator("img[src*='report/gen_gap_vs_label_noise.png']")  # (the UI drops alt texts)
    figure.wait_for()
    assert figure.evaluate("img => img.complete && img.naturalWidth > 300")  # the PNG loaded from the artifacts
    table = description.locator("table", has=page.locator("th", has_text="gen_gap")).first
    headers = [h.strip() for h in table.locator("th").all_inner_texts()]
    assert headers[:3] == ["run", "arch", "label_noise"] and "gen_gap" in headers
    cells = table.locator("tbody tr").all_inner_texts()
    assert len(cells) == 4 and {c.split("\t")[1] for c in cells} == {"mlp1x512", "cnn"}
    assert "Sweep ui-browser ended: 4 trials, 4 finished, 0 failed" in description.inner_text()
    figure.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "3-parent-description.png"))
    assert actions <= RECIPE_MAX_ACTIONS
    # The recipe's other second action: the parent's own charts, gen_gap_vs_noise/<arch> against noise level.
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_text("gen_gap_vs_noise", exact=False).first.wait_for()
    page.screenshot(path=str(SHOTS / "4-parent-charts.png"))
