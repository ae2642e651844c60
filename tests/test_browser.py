"""The notebooks in a real browser: JupyterLab (a subprocess) driven in Debian's Chromium by Playwright.

A person's path: open export_cohort.ipynb, run all cells, check the connection (and the API address
field), pick a cohort, Preview, Export; then the emulated OneSignal's segment for that cohort holds
exactly the cohort's exportable members. Then explore_cohorts.ipynb and mtu_report.ipynb, open side by
side, render their widgets and chart. Each step leaves a screenshot in $TOOLKIT_ARTIFACTS (default
var/artifacts/browser/), with the Lab server's log.

Needs /usr/bin/chromium (`apt-get install -y chromium`, as root) and Playwright (`pip install -e '.[test]'`);
Playwright's own browser download is not used. Without them the tests are skipped, unless
TOOLKIT_REQUIRE_BROWSER=1 (CI), which makes a missing browser a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers import NOW, ROOT, SAMPLE
from toolkit import Store, cohorts, demo, export, load, matching, mtu
from toolkit.emulator import Emulator

pytestmark = pytest.mark.timeout(900)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HOW = ("the browser tests need Debian's Chromium at /usr/bin/chromium and Playwright from pip: "
       "`apt-get install -y chromium` (as root) and `pip install -e '.[notebooks,test]'`; "
       "TOOLKIT_REQUIRE_BROWSER=1 makes their absence a failure")
ARTIFACTS = Path(os.environ.get("TOOLKIT_ARTIFACTS") or ROOT / "var" / "artifacts" / "browser")
CHURN = "Churn risk: active in September, silent in October"    # fixed dates: the same on any clock
WAIT = 120_000        # ms: generous, for two shared cores; every wait is on a DOM state, not a sleep


def _playwright():
    missing = [] if CHROMIUM.exists() else [str(CHROMIUM)]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package")
        sync_playwright = None
    if missing:
        message = f"missing {' and '.join(missing)}: {HOW}"
        if os.environ.get("TOOLKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


# -- the world the browser sees ------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Lab root laid out as the repository is (notebooks/ beside var/demo.duckdb, the notebooks'
    default store), the sample loaded with its cohorts, and an emulator holding a OneSignal user for
    every exportable member of CHURN (so its segment must equal the exportable set exactly)."""
    _playwright()                                   # skip (or fail) before any setup
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    (root / "var").mkdir()
    db = root / "var" / "demo.duckdb"
    with Store(db) as store:
        load(store, [SAMPLE], now=NOW)
        cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
        # The kernel evaluates as of its own clock; CHURN's rules use fixed dates, so this is its answer.
        found = matching.preview(store, CHURN, now=datetime.now(UTC))
        exportable = {(t.id_type, t.onesignal_id) for t in export.targets(found).values()}
        users = demo.seed_users(store)
        mtu_by_month = mtu.report_frame(store)["mtu"].to_dict()
    seeded = {("subscription_id", u["subscription_ids"][0]) if "subscription_ids" in u
              else ("external_id", u["external_id"]) for u in users}
    users += [{"subscription_ids": [i]} if kind == "subscription_id" else {"external_id": i}
              for kind, i in sorted(exportable - seeded)]
    assert found.summary["exportable"] == len(exportable) > 0 and found.summary["members"] > len(exportable)
    with Emulator(user_rate_limit=0) as emulator:
        app = emulator.add_app()
        emulator.add_users(app.app_id, users)
        yield {"root": root, "db": db, "emulator": emulator, "app": app, "exportable": exportable,
               "mtu": mtu_by_month}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(world):
    """JupyterLab on 127.0.0.1 with the store, the emulator's address and key in its environment
    (the kernels inherit it), its settings and workspaces kept inside the test's directory."""
    yield from _running_lab(world, {}, "jupyterlab.log")


def _running_lab(world, extra_env: dict, log_name: str):
    root, app = world["root"], world["app"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    settings = root / ".lab" / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"checkForUpdates": False, "fetchNews": "false"}))     # no news toast over the cells
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "TOOLKIT_DB": str(world["db"]), "ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
           "ONESIGNAL_BASE_URL": world["emulator"].url,
           "TOOLKIT_CREDENTIALS": str(root / "no-credentials.json"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab" / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".lab" / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(root / ".lab" / "runtime"), **extra_env}
    log = open(ARTIFACTS / log_name, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
         "--port", str(port), f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.terminals_enabled=False"],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(process, f"{url}/api/status?token={token}", log_name)
        yield {"url": url, "token": token, "process": process}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_for_server(process, status_url: str, log_name: str, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {process.returncode}; see {ARTIFACTS / log_name}")
        try:
            with urllib.request.urlopen(status_url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)           # polling a server that is starting: the one wait with no DOM to watch
    raise AssertionError(f"JupyterLab did not answer within {limit:.0f} s; see {ARTIFACTS / log_name}")


def _api(lab, method: str, path: str):
    request = urllib.request.Request(f"{lab['url']}{path}", method=method,
                                     headers={"Authorization": f"token {lab['token']}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        body = reply.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def page(lab):
    sync_playwright = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(WAIT)
        page = context.new_page()
        try:
            yield page
        finally:
            browser.close()


# -- driving the Lab -----------------------------------------------------------------------------

def shot(page, name: str, showing=None) -> None:
    """A screenshot of the Lab, scrolled to ``showing`` (a locator) when given."""
    if showing is not None:
        showing.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def notebook(page):
    """The notebook panel in front."""
    return page.locator(".jp-NotebookPanel:visible")


def open_notebook(page, lab, name: str) -> None:
    """Open a notebook as a person does: from the file browser when the Lab is up, else by its URL."""
    if page.url.startswith(f"{lab['url']}/lab"):
        page.locator(".jp-DirListing-item", has_text=name).dblclick()
    else:
        page.goto(f"{lab['url']}/lab/tree/notebooks/{name}?token={lab['token']}")
    page.locator(f".lm-TabBar-tab.lm-mod-current:has-text('{name}')").wait_for()
    kernel_idle(page)
    notebook(page).locator(".jp-CodeCell").first.wait_for()


def kernel_idle(page) -> None:
    """The status bar names the front notebook's kernel: started and idle."""
    page.locator("#jp-main-statusbar", has_text="ipykernel) | Idle").wait_for()


def run_all(page) -> None:
    """Run > Run All Cells, then wait until every code cell ran or one failed."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    page.wait_for_function("""(panel) => {
        const cells = [...panel.querySelectorAll('.jp-CodeCell')];
        const done = cells.length > 0
            && cells.every(c => /\\[\\d+\\]/.test(c.querySelector('.jp-InputPrompt').textContent));
        return done || panel.innerText.includes('Traceback');
    }""", arg=notebook(page).element_handle())
    kernel_idle(page)


def assert_rendered_cleanly(page, widgets: bool = True) -> None:
    """Widgets rendered (not "Loading widget..."), no traceback, no error output."""
    panel = notebook(page)
    assert (panel.locator(".jupyter-widgets").count() > 0) == widgets
    text = panel.inner_text()
    assert "Loading widget" not in text and "Traceback" not in text, text[-2000:]
    errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.all_inner_texts()         # errors and warnings both render here


def widget(page, kind: str, description: str):
    """The control of a widget with this description (its label), e.g. ("dropdown", "Cohort")."""
    return notebook(page).locator(f".widget-{kind}:has(> label:text-is('{description}'))")


def button(page, text: str):
    return notebook(page).locator("button.widget-button", has_text=text)


def label_with(page, pattern: str):
    return notebook(page).locator(".toolkit-wrap", has_text=re.compile(pattern))


def fits(locator) -> bool:
    """Nothing of the element is cut off: its box inside the output area, and its content inside its
    box or reachable by its own scroll bar."""
    return locator.evaluate("""el => {
        const box = el.getBoundingClientRect();
        const area = el.closest('.jp-OutputArea-output').getBoundingClientRect();
        const style = getComputedStyle(el), scrolls = v => v === 'auto' || v === 'scroll';
        return (el.scrollWidth <= el.clientWidth + 1 || scrolls(style.overflowX))
               && (el.scrollHeight <= el.clientHeight + 1 || scrolls(style.overflowY))
               && box.right <= area.right + 1 && box.left >= area.left - 1;
    }""")


def segment_members(world, cohort: str) -> set[tuple[str, str]]:
    """(id type, id) of every emulated OneSignal user in the cohort's segment."""
    state = world["emulator"].state["apps"][world["app"].app_id]
    from toolkit.export import segment_name

    (segment,) = [s for s in state["segments"] if s["name"] == segment_name(cohort)]
    members = set(segment["members"]["onesignal_ids"])
    found = set()
    for user in state["users"]:
        if user["onesignal_id"] in members:
            found |= ({("external_id", user["external_id"])} if user["external_id"] is not None else
                      {("subscription_id", s["id"]) for s in user["subscriptions"]})
    return found


# -- the tests -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_a_cohort_with_the_widgets_alone(world, lab, page):
    emulator = world["emulator"]
    open_notebook(page, lab, "export_cohort.ipynb")
    shot(page, "01-export-opened")
    run_all(page)
    assert_rendered_cleanly(page)
    # Connected from the kernel's environment, to the address it names; one live status, no stale print.
    address = widget(page, "text", "API address").locator("input")
    assert address.input_value() == emulator.url
    label_with(page, r"^Connected$").wait_for()
    assert "Not connected" not in notebook(page).inner_text()
    assert notebook(page).locator(".jp-RenderedText", has_text="Connected").count() == 0   # no printed status
    shot(page, "02-export-ran-connected")

    # Another address: the failure says why, wrapped inside the panel; back to the emulator, connected.
    address.fill("http://127.0.0.1:9/an/address/where/nothing/listens/" + "so-the-reason-is-long/" * 6)
    button(page, "Connect").click()
    failure = label_with(page, r"^Not connected: (?!the API address changed)")
    failure.wait_for()
    assert fits(failure), failure.inner_text()
    shot(page, "03-connect-failure-wraps", failure)
    address.fill(emulator.url)
    button(page, "Connect").click()
    label_with(page, r"^Connected$").wait_for()

    # Pick the cohort, Preview, Export.
    widget(page, "dropdown", "Cohort").locator("select").select_option(CHURN)
    button(page, "Preview").click()
    exportable = len(world["exportable"])
    label_with(page, rf"^Preview: add {exportable:,}, remove 0, no-op 0; guard passes").wait_for()
    shot(page, "04-preview")
    button(page, "Export").click()
    label_with(page, r"^Export (ok|partial|failed|stopped)").wait_for()
    shot(page, "05-exported")
    assert label_with(page, r"^Export ").inner_text() == "Export ok"
    assert segment_members(world, CHURN) == world["exportable"]
    assert CHURN in notebook(page).locator(".widget-html table").last.inner_text()

    # A dynamic sync of it, then Stop: nothing preselected, and a confirmation naming the cohort.
    notebook(page).locator(".widget-toggle-button", has_text="Dynamic").click()
    button(page, "Export").click()
    dynamic = notebook(page).locator(".toolkit-fit pre", has_text=re.compile(rf"^{re.escape(CHURN)}: dynamic export"))
    assert dynamic.inner_text().startswith(f"{CHURN}: dynamic export ok")    # waits for the run's report
    stop_choice = widget(page, "dropdown", "Dynamic").locator("select")
    stop_choice.locator(f"option[value='{CHURN}']").wait_for(state="attached")
    assert stop_choice.evaluate("s => s.selectedIndex") == -1                 # nothing chosen for the user
    stop_choice.select_option(CHURN)
    button(page, "Stop sync").click()
    question = label_with(page, rf"^Stop the dynamic sync of {re.escape(CHURN)}\?")
    question.wait_for()
    shot(page, "06-stop-asks-first", question)
    button(page, "Yes, stop it").click()
    label_with(page, rf"^Stopped the dynamic sync of {re.escape(CHURN)}").wait_for()
    shot(page, "07-stopped")
    assert segment_members(world, CHURN) == world["exportable"]        # OneSignal keeps the last export
    assert_rendered_cleanly(page)


@pytest.mark.slow
def test_explorer_and_mtu_render_side_by_side(world, lab, page):
    open_notebook(page, lab, "explore_cohorts.ipynb")
    run_all(page)
    assert_rendered_cleanly(page)
    explorer = notebook(page)
    assert explorer.locator(".widget-dropdown select").input_value()  # a cohort is shown
    assert explorer.locator(".widget-output img").first.evaluate("i => i.naturalWidth") > 0   # the funnel
    table = explorer.locator(".widget-html-content > div:has(> table)").last
    shot(page, "08-explorer", explorer.locator(".widget-dropdown select"))
    headers = table.locator("th").all_inner_texts()
    assert headers == ["distinct_id", "status", "onesignal_id", "id_type", "detail"]
    assert all(h.strip() for h in explorer.locator("th").all_inner_texts())
    assert fits(table)
    shot(page, "09-explorer-members", table.locator("th").first)

    open_notebook(page, lab, "mtu_report.ipynb")
    run_all(page)
    assert_rendered_cleanly(page, widgets=False)                      # a table and a chart, no widgets
    mtu_panel = notebook(page)
    chart = mtu_panel.locator(".jp-RenderedImage img").first
    assert chart.evaluate("i => i.naturalWidth") > 0
    shot(page, "10-mtu-chart", chart)
    rows = mtu_panel.locator(".jp-RenderedHTMLCommon table").first.locator("tbody tr").all_inner_texts()
    assert {r.split("\t")[0]: int(r.split("\t")[2]) for r in rows} == world["mtu"]   # month -> MTU, as toolkit.mtu

    # All three notebooks are open with live kernels at once: none holds the store between actions.
    paths = {s["path"] for s in _api(lab, "GET", "/api/sessions")}
    assert {"notebooks/export_cohort.ipynb", "notebooks/explore_cohorts.ipynb", "notebooks/mtu_report.ipynb"} <= paths
    page.locator(".lm-TabBar-tab", has_text="explore_cohorts.ipynb").click()
    assert_rendered_cleanly(page)
    shot(page, "11-explorer-again")

    # The export panel, still open, exports again while the other two are open: it writes the store.
    page.locator(".lm-TabBar-tab", has_text="export_cohort.ipynb").click()
    notebook(page).locator(".widget-toggle-button", has_text="One-time").click()
    widget(page, "dropdown", "Cohort").locator("select").select_option(CHURN)
    button(page, "Export").click()
    once = notebook(page).locator(".toolkit-fit pre", has_text=re.compile(rf"^{re.escape(CHURN)}: once export"))
    assert once.inner_text().startswith(f"{CHURN}: once export ok")
    assert segment_members(world, CHURN) == world["exportable"]
    shot(page, "12-exported-beside-the-others")


@pytest.fixture(scope="module")
def lake_lab(world):
    """A second Lab whose kernels have $TOOLKIT_LAKE (as `toolkit lab --lake` sets it): the world's data
    as a lake, and a store holding the cohort definitions only, so what the explorer shows is the lake's."""
    from toolkit.engine import Evaluator, choose
    from toolkit.lake import writer

    root = world["root"]
    lake, definitions = root / "lake", root / "var" / "definitions.duckdb"
    with Store(world["db"], read_only=True) as store:
        writer.export_store(store, lake)
    with Store(definitions) as store:
        cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
    with Store(definitions, read_only=True) as store, Evaluator(choose(lake=str(lake))) as evaluator:
        summary = evaluator.preview(store, CHURN, now=datetime.now(UTC)).summary   # the kernel's clock
    assert summary["members"] > 0
    for running in _running_lab(world, {"TOOLKIT_DB": str(definitions), "TOOLKIT_LAKE": str(lake)},
                                "jupyterlab-lake.log"):
        yield {**running, "lake": lake, "summary": summary}


@pytest.mark.slow
def test_the_explorer_previews_a_cohort_over_a_lake(lake_lab, page):
    open_notebook(page, lake_lab, "explore_cohorts.ipynb")
    run_all(page)
    assert_rendered_cleanly(page)
    label_with(page, rf"^evaluated on DuckDB over the lake {re.escape(str(lake_lab['lake']))}$").wait_for()
    widget(page, "dropdown", "Cohort").locator("select").select_option(CHURN)
    s = lake_lab["summary"]
    size = label_with(page, rf"^{s['members']:,} members, {s['exportable']:,} exportable")
    size.wait_for()
    shot(page, "13-explorer-over-a-lake", size)


def test_without_chromium_the_tests_say_how_to_run_them(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("TOOLKIT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        _playwright()
    monkeypatch.setenv("TOOLKIT_REQUIRE_BROWSER", "1")                # CI: a missing browser fails
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        _playwright()
