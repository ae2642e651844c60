"""Fixtures shared by the test modules (helpers that are not fixtures live in helpers.py).

Stores: `empty_store` and `empty_file_store` are new and migrated (copies of `store_template`, migrated once
per session); `sample_store_file` is the sample loaded with its cohorts, once per session, `sample_store`
a copy of it shared by a module's tests (they read) and `sample_store_copy` a copy a test writes in;
`built_once(fill)` a small data set of a module's own, loaded once and shared read-only by its tests,
`filled_once(fill, path)` a copy of one at `path` for a test to write in; `new_store(path)` a new store at
`path`; `held_open(path)` keeps a store's database open while a test reopens it dozens of times.
Every DuckDB database the tests open in this process skips fsync and, under xdist, takes the worker's
share of the cores as its threads, but in tests marked ``all_cores`` (`_databases_without_fsync`).
Emulator: `running_emulator` on 127.0.0.1, `emulator_app` an app in it; `retries_unwaited` records the
OneSignal client's retry waits instead of waiting them.
`demo_run` is `toolkit demo` run once per session; `demo_copy` a copy of its folder to write in.

The fast part (`-m "not slow"`, `make test-fast`) runs the property tests under the hypothesis profile
"fast" (at most FAST_EXAMPLES examples each); the whole suite (`make test`) runs each test's own count."""

import sys

# Keep the bytecode caches even where PYTHONDONTWRITEBYTECODE is set (as on the CI machines): without them each
# worker compiles the toolkit and rewrites the tests' asserts again on every run, ~3.5 s of CPU per worker.
# The caches are __pycache__ folders, ignored by git.
sys.dont_write_bytecode = False

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from helpers import NOW, ROOT, SAMPLE
from toolkit.store import Store

# Tests write a file and load it at once: no waiting for it to settle (tests/test_hostile_load.py tests it).
os.environ.setdefault("TOOLKIT_SETTLE_SECONDS", "0")


@pytest.fixture(autouse=True)
def quick_webhook_retry(monkeypatch):
    """A webhook that failed is tried again after 0.5 s; in the tests after 0.01 s (the alert tests fail a
    webhook on purpose, cycle after cycle)."""
    channels = sys.modules.get("toolkit.alerts.channels")
    if channels is not None:
        monkeypatch.setattr(channels, "RETRY_PAUSE", 0.01)


# -- the property tests' examples: fewer in the fast part -------------------------------------------------

FAST_EXAMPLES = 20
settings.register_profile("fast", max_examples=FAST_EXAMPLES)


def pytest_configure(config):
    """A run that leaves the slow tests out (make test-fast) is a quick check: the property tests try
    FAST_EXAMPLES examples each, unless a profile is named (--hypothesis-profile)."""
    if config.getoption("markexpr", "") == "not slow" and not config.getoption("hypothesis_profile", None):
        settings.load_profile("fast")


def pytest_collection_modifyitems(config, items):
    """Under the "fast" profile, a test's own @settings(max_examples=N) is capped too (its settings
    override the profile's): the whole suite keeps every test's N."""
    if settings.get_current_profile_name() != "fast":
        return
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if getattr(test, "is_hypothesis_test", False) and own is not None and own.max_examples > FAST_EXAMPLES:
            test._hypothesis_internal_use_settings = settings(own, max_examples=FAST_EXAMPLES)


@pytest.fixture
def users_unspaced(monkeypatch):
    """The cycle's shared budget (``sync.AppBudget``) spaces no user's updates a second apart, for tests
    whose emulator takes them at any pace (``user_rate_limit=0``) and are about something else: two cohorts
    sharing users otherwise wait out OneSignal's one update per user per second, cycle after cycle
    (test_onesignal_client and the slow test_cycle fairness test keep the spacing)."""
    import functools

    from toolkit import rate_budget, sync

    monkeypatch.setattr(sync, "AppBudget", functools.partial(rate_budget.AppBudget, user_spacing=0.0))


@pytest.fixture
def retries_unwaited(monkeypatch) -> list[float]:
    """The OneSignal client's retry waits recorded instead of waited (the returned list, in seconds): its
    backoff sleeps and the second a 429 holds the app's budget (``pause``), for the tests of what a 429 or a
    500 does to a run, a read-back or the output, in-process CLI runs included. A 429 without Retry-After
    waited out a real second, a 500 up to two (the CLI's backoff); test_onesignal_client and
    test_hostile_faults keep the real waits."""
    from toolkit import onesignal, rate_budget

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    init = onesignal.OneSignalClient.__init__

    def with_recorded_sleep(self, *args, **options):
        init(self, *args, **{"sleep": sleep, **options})

    monkeypatch.setattr(onesignal.OneSignalClient, "__init__", with_recorded_sleep)
    for budget in (onesignal.RateLimiter, rate_budget.AppBudget):
        monkeypatch.setattr(budget, "pause", lambda self, seconds: waits.append(seconds))
    return waits


@pytest.fixture
def funnel_as_text(monkeypatch):
    """The cohort explorer shows its funnel as text only, as without matplotlib (``widgets._funnel_png``
    gives None): for explorer tests about something else. A funnel drawn costs ~0.1 s of CPU (and
    matplotlib's import); test_widgets' each-cohort test still draws every one."""
    from toolkit import widgets

    monkeypatch.setattr(widgets, "_funnel_png", lambda steps, title: None)


@pytest.fixture
def mixpanel_seconds(monkeypatch) -> dict:
    """Mixpanel's 3 queries/second raised to 30 on both sides: the client's budgets (``toolkit.mixpanel``'s
    pull and client) and the emulator's windows (pass the returned limits: ``MixpanelEmulator(...,
    **mixpanel_seconds)``). For tests about something else that page a few records at a time: they waited
    out the second, ~1 s a test. The hour and the concurrency keep Mixpanel's numbers; the budget's own
    tests (test_mixpanel_client) keep the real second."""
    from dataclasses import replace

    from toolkit.mixpanel import budget, client, pull

    limits = {"export_limits": replace(budget.EXPORT, per_second=30),
              "query_limits": replace(budget.QUERY, per_second=30)}
    for module in (client, pull):
        monkeypatch.setattr(module, "EXPORT", limits["export_limits"])
        monkeypatch.setattr(module, "QUERY", limits["query_limits"])
    return limits


# -- one TLS context per worker ---------------------------------------------------------------------------

def _one_default_tls_context():
    """httpx builds a new TLS context (reading certifi's ~150 certificates: ~30 ms of CPU) for every
    client, even one that only speaks plain HTTP to the emulator; the tests make ~150 clients. They share
    the one the first client built with the default settings (the same context, built the same way)."""
    from httpx._transports import default

    build, built = default.create_ssl_context, {}

    def create_ssl_context(verify=True, cert=None, trust_env=True):
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in built:
            built[key] = build(verify=verify, cert=cert, trust_env=trust_env)
        return built[key]

    default.create_ssl_context = create_ssl_context


_one_default_tls_context()


# -- jsonschema's IRI grammar, built when first used --------------------------------------------------

def _iri_grammar_on_first_use():
    """jsonschema imports rfc3987_syntax (when installed, as jupyter-events has it) for its "iri" format
    check, and that import compiles a Lark grammar: ~1.5 s of CPU in whichever worker first imports
    nbformat or papermill, though nothing here checks an IRI (nbformat, nbclient and papermill pass no
    format checker). The module is loaded, and the grammar compiled, when the check is first called; the
    check is the same."""
    import importlib
    import importlib.util
    import types

    if "rfc3987_syntax" in sys.modules or importlib.util.find_spec("rfc3987_syntax") is None:
        return
    stub = types.ModuleType("rfc3987_syntax")

    def is_valid_syntax(term, value):
        if sys.modules.get("rfc3987_syntax") is stub:
            del sys.modules["rfc3987_syntax"]
        stub.is_valid_syntax = importlib.import_module("rfc3987_syntax").is_valid_syntax
        return stub.is_valid_syntax(term, value)

    stub.is_valid_syntax = is_valid_syntax
    sys.modules["rfc3987_syntax"] = stub


_iri_grammar_on_first_use()


# -- no fsync ---------------------------------------------------------------------------------------------

def _databases_without_fsync():
    """Every DuckDB database this process opens skips fsync (DuckDB's ``fsync_mode = NONE``): each close
    checkpoints and waited ~20 ms for the disk (~700 closes a run, more on a disk other work keeps busy),
    each commit ~0.2 ms. fsync only keeps data through an operating-system crash or a power cut, which no
    test makes; a killed process's writes survive without it (tests that kill one run it as a process of
    its own, which keeps DuckDB's default).

    Under pytest-xdist each database also gets the worker's share of the cores as its threads: DuckDB
    starts a thread per core in every worker, and on 2 cores two workers' four threads spent ~15% more
    CPU on the tests' small queries (measured over five modules: 47 s -> 40 s). Processes the tests start
    (the demo, the CLI, killed loads) keep DuckDB's default, as does a run without workers, and so do the
    tests marked ``all_cores`` (a load within its memory: each thread holds buffers of its own)."""
    import duckdb

    connect = duckdb.connect
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        _WORKER_THREADS["threads"] = max(1, (os.cpu_count() or 1) // workers)

    def connect_without_fsync(database=":memory:", read_only=False, config=None, **options):
        return connect(database, read_only=read_only,
                       config={"fsync_mode": "NONE", **_WORKER_THREADS, **(config or {})}, **options)

    duckdb.connect = connect_without_fsync


_WORKER_THREADS: dict[str, int] = {}
_databases_without_fsync()


@pytest.fixture(autouse=True)
def _all_cores_when_marked(request):
    """A test marked ``all_cores`` opens its databases with DuckDB's default threads (autouse: before the
    fixtures that open its stores)."""
    if not request.node.get_closest_marker("all_cores") or not _WORKER_THREADS:
        yield
        return
    saved = dict(_WORKER_THREADS)
    _WORKER_THREADS.clear()
    try:
        yield
    finally:
        _WORKER_THREADS.update(saved)


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """A new store file, migrated once per session (per worker). About 400 tests start from a new store:
    copying this file and opening the copy costs a third of migrating a new one (~25 ms against ~60 ms).
    test_store.py migrates new and old stores itself."""
    path = tmp_path_factory.mktemp("store-template") / "store.duckdb"
    Store(path).close()
    return path


def copy_of(template: Path, path: Path) -> Path:
    shutil.copyfile(template, path)
    return path


@pytest.fixture(scope="session")
def new_store(store_template):
    """``new_store(path)``: ``path`` made a new migrated store (a copy of ``store_template``); returns ``path``.
    For a test that makes its store where it chooses, or several."""
    return lambda path: copy_of(store_template, path)


@pytest.fixture
def empty_store(store_template, tmp_path):
    """A new migrated store (a file of the test's own: a copy opens faster than an in-memory store migrates)."""
    with Store(copy_of(store_template, tmp_path / "empty.duckdb")) as s:
        yield s


@pytest.fixture(scope="module")
def built_once(store_template, tmp_path_factory):
    """``built_once(fill)``: a new store filled by ``fill(store, folder)`` once per module, then opened
    read-only for every test of the module that asks for the same ``fill`` (a test that writes takes a
    store of its own). Parametrized tests over one small data set load it once instead of per case."""
    opened: dict = {}

    def get(fill):
        if fill not in opened:
            folder = tmp_path_factory.mktemp("built")
            with Store(copy_of(store_template, folder / "store.duckdb")) as store:
                fill(store, folder)
            opened[fill] = Store(folder / "store.duckdb", read_only=True)
        return opened[fill]

    yield get
    for store in opened.values():
        store.close()


@pytest.fixture(scope="module")
def filled_once(store_template, tmp_path_factory):
    """``filled_once(fill, path)``: ``path`` made a copy of a new store filled by ``fill(store, folder)``,
    filled once per module (loading costs ~0.1 s of CPU, a copy ~1 ms): for a module whose tests each
    start from the same data and write in their copy (a world fixture registering a sync with its own
    emulator). Returns ``path``."""
    filled: dict = {}

    def copy(fill, path: Path) -> Path:
        if fill not in filled:
            folder = tmp_path_factory.mktemp("filled")
            with Store(copy_of(store_template, folder / "store.duckdb")) as store:
                fill(store, folder)
            filled[fill] = folder / "store.duckdb"
        return copy_of(filled[fill], path)

    return copy


@pytest.fixture
def held_open():
    """``held_open(path)``: the store's database kept open by the test while it runs (returns ``path``), as
    a notebook kernel holding its store keeps it. Every Store the code under test opens at ``path`` in
    this process is then a new connection to that database: ~1 ms of CPU against ~20 ms for a DuckDB
    database starting up (its catalog and built-in extensions), and no checkpoint on each close. For the
    worlds whose scheduled runs and CLI commands reopen the store dozens of times a module
    (test_alerts, test_sync_states, test_reconcile); a read-only Store is then read through the write
    connection (store._connect's path for a store this process holds). The file stays locked while held:
    a test where another process opens the store calls ``held_open.release()`` first."""
    held = HeldOpen()
    yield held
    held.release()


class HeldOpen:
    def __init__(self):
        self.connections: list = []

    def __call__(self, path):
        import duckdb

        self.connections.append(duckdb.connect(str(path)))
        return path

    def release(self) -> None:
        while self.connections:
            self.connections.pop().close()


@pytest.fixture
def empty_file_store(store_template, tmp_path):
    with Store(copy_of(store_template, tmp_path / "store.duckdb")) as s:
        yield s


@pytest.fixture
def running_emulator():
    """A OneSignal emulator on 127.0.0.1 with its default limits (1 update/s per user)."""
    from toolkit.emulator import Emulator

    with Emulator() as emu:
        yield emu


@pytest.fixture
def emulator_app(running_emulator):
    return running_emulator.add_app()


@pytest.fixture(scope="module")
def sample_store(sample_store_file, tmp_path_factory):
    """The sample loaded (as of NOW) with its cohorts stored; shared by a module's tests, which only read it.
    A copy of the session's `sample_store_file` (loading the sample costs ~0.5 s of CPU, a copy ~35 ms),
    writable as a store in use is: compiling a cohort may add typed event columns to it."""
    with Store(copy_of(sample_store_file, tmp_path_factory.mktemp("sample") / "s.duckdb")) as s:
        yield s


@pytest.fixture(scope="session")
def sample_store_file(tmp_path_factory):
    """The sample loaded (as of NOW) with its cohorts, in a store file made once per session (per worker);
    tests only read it or take a copy to write. Modules needing another shape define their own."""
    from toolkit import cohorts, load

    path = tmp_path_factory.mktemp("sample") / "s.duckdb"
    with Store(path) as s:
        load(s, [SAMPLE], now=NOW)
        cohorts.save_all(s, cohorts.load_definitions(SAMPLE / "cohorts.yaml"), now=NOW)
    return path


# -- the demo, run once ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DemoRun:
    cwd: Path          # the folder the person ran `toolkit demo` from
    output: str        # what it printed

    @property
    def workdir(self) -> Path:       # everything the demo wrote: demo.duckdb, onesignal.json, runs/
        return self.cwd / "var"


@pytest.fixture
def sample_store_copy(sample_store_file, tmp_path) -> Path:
    """A copy of `sample_store_file` of the test's own, to write in."""
    return copy_of(sample_store_file, tmp_path / "store.duckdb")


@pytest.fixture(scope="session")
def sample_lake(sample_store_file, tmp_path_factory) -> Path:
    """The sample store written as a lake (`toolkit lake export`), once per session."""
    from toolkit.lake import writer

    path = tmp_path_factory.mktemp("lake") / "lake"
    with Store(sample_store_file, read_only=True) as store:
        writer.export_store(store, path)
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """`toolkit demo` as a person runs it, from a folder of their own, once per test session (the whole
    main job, the slowest fixture there is). Under pytest-xdist the workers share that one run: the first
    to ask runs it, the others wait for it (a lock in the session's own temporary folder). Read only: a
    test that writes, or runs a command that may, uses demo_copy."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent       # this session's, above the workers' own
    else:
        shared = tmp_path_factory.getbasetemp()
    cwd, printed = shared / "first-hour", shared / "first-hour.out"
    with open(shared / "first-hour.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not printed.exists():
            shutil.rmtree(cwd, ignore_errors=True)      # what a failed attempt left
            cwd.mkdir()
            out = subprocess.run([sys.executable, "-m", "toolkit", "demo"], capture_output=True, text=True,
                                 cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
            assert out.returncode == 0, out.stdout + out.stderr
            printed.write_text(out.stdout)
    return DemoRun(cwd, printed.read_text())


@pytest.fixture
def demo_copy(demo_run, tmp_path) -> DemoRun:
    """The demo's folder copied for one test, with the demo's output."""
    cwd = tmp_path / "first-hour"
    shutil.copytree(demo_run.cwd, cwd)
    return DemoRun(cwd, demo_run.output)


# -- Spark ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def spark():
    """The process's one Spark session (local[2]; starting the JVM costs about 11 s, so once per worker)."""
    from toolkit import spark_session

    return spark_session.start()
