"""`toolkit lab`: JupyterLab on the notebooks, with the demo's store and a running OneSignal emulator
already known to the kernels.

The emulator starts from the demo's saved state (WORKDIR/onesignal.json) on 127.0.0.1, and the demo
app connects to it, so the exports the demo registered (against its own emulator, long gone) follow
the new address. JupyterLab then runs on 127.0.0.1 with TOOLKIT_DB, ONESIGNAL_APP_ID,
ONESIGNAL_API_KEY and ONESIGNAL_BASE_URL in the environment its kernels inherit: a notebook finds the
store, the app and its key without a word typed; TOOLKIT_AS_OF tells the explorer and export notebooks
to evaluate cohorts as of the demo's day (the sample's last), as the demo did. With ``--lake PATH``
(``--engine spark --master URL``), TOOLKIT_LAKE and TOOLKIT_ENGINE (TOOLKIT_SPARK_MASTER/_REMOTE) make
the explorer, export and MTU notebooks evaluate over that lake (toolkit.engine.from_environment). When Lab exits, the
emulator saves its state and stops.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Literal

from toolkit import demo, report, sync
from toolkit.credentials import ENV_APP, ENV_KEY
from toolkit.emulator import App, Emulator
from toolkit.engine import STORE, EngineChoice, environment
from toolkit.errors import EmulatorError, SetupError
from toolkit.onesignal import ENV_BASE_URL, Credentials
from toolkit.resources import NOTEBOOKS
from toolkit.store import Store

ENV_DB = "TOOLKIT_DB"
ENV_AS_OF = "TOOLKIT_AS_OF"     # read by the notebooks' `now` parameter


def pick_app(emulator: Emulator) -> App:
    """The demo's app, or the state's only app."""
    apps = emulator.world.apps
    if demo.DEMO_APP_ID in apps:
        return apps[demo.DEMO_APP_ID]
    if len(apps) == 1:
        return next(iter(apps.values()))
    raise EmulatorError(f"the emulator state {emulator.state_file} holds {len(apps)} apps and not the demo's: "
                       "run `toolkit demo` with a new --workdir")


def kernel_environment(db: Path, app: App, base_url: str, as_of: datetime | None = None,
                       engine: EngineChoice = STORE) -> dict[str, str]:
    """What the kernels inherit: the store, the app, its key, the emulator's address, the "as of" and the
    engine with its lake."""
    env = {ENV_DB: str(db), ENV_APP: app.app_id, ENV_KEY: app.api_key, ENV_BASE_URL: base_url}
    return env | ({ENV_AS_OF: as_of.isoformat()} if as_of else {}) | environment(engine)


def lab_command(notebooks: Path, port: int, browser: bool = True) -> list[str]:
    return [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            f"--ServerApp.root_dir={notebooks}", *([] if browser else ["--no-browser"]),
            *(["--allow-root"] if os.geteuid() == 0 else [])]     # containers and CI run as root


def run(workdir: Path, *, db: str | Path | None = None, notebooks: Path | None = None, port: int = 8888,
        emulator_port: int = 0, browser: bool = True, as_of: datetime | Literal["now"] | None = None,
        engine: EngineChoice = STORE) -> int:
    """``as_of``: when the notebooks evaluate cohorts; None: as the demo did (the store's last event
    day); "now": the current time."""
    workdir = Path(workdir).resolve()
    state = workdir / "onesignal.json"
    db = Path(db or workdir / "demo.duckdb").resolve()
    notebooks = Path(notebooks or NOTEBOOKS).resolve()
    for path, what in ((state, "the emulator's saved state"), (db, "the store")):
        if not path.exists():
            raise SetupError(f"{what} {path} does not exist: run `toolkit demo --workdir {workdir}` first")
    if not notebooks.is_dir():
        raise SetupError(f"no notebooks folder at {notebooks}")
    if importlib.util.find_spec("jupyterlab") is None:
        raise SetupError("toolkit lab needs JupyterLab, from the notebooks extra: pip install 'toolkit[notebooks]'")

    with Emulator(port=emulator_port, state_file=state) as emulator:
        app = pick_app(emulator)
        with Store(db) as store:
            status = sync.connect(store, Credentials(app.app_id, app.api_key), emulator.url)
            if as_of is None:
                as_of = demo.end_of_day(demo.last_event_day(store))
        if not status["connected"]:
            raise EmulatorError(f"the emulator at {emulator.url} refused the demo app: {status['detail']}")
        as_of = None if isinstance(as_of, str) else as_of     # "now": the current time
        print(f"OneSignal emulator at {emulator.url} (state: {state}); app {app.app_id}, its exports now "
              f"point here\nJupyterLab on {notebooks}, store {db}; the kernels have {ENV_DB}, {ENV_APP}, "
              f"{ENV_KEY}, {ENV_BASE_URL}" + (f" and {ENV_AS_OF}={as_of.isoformat()} (cohorts as of then; "
                                              "--as-of now for the current time)" if as_of else "")
              + ("" if engine.on_store else f"; cohorts and MTU {report.engine_text(**engine.to_dict())}")
              + ". Stop Lab (Ctrl-C twice) to stop the emulator.", flush=True)
        lab = subprocess.Popen(lab_command(notebooks, port, browser),
                               env={**os.environ, **kernel_environment(db, app, emulator.url, as_of, engine)})
        code = wait(lab)
    print("JupyterLab stopped; the emulator saved its state and stopped.")
    return max(code, 0)


def wait(child: subprocess.Popen) -> int:
    """Wait for Lab. A Ctrl-C reaches Lab too (it asks, or stops), so here it only keeps waiting;
    SIGTERM is passed on."""
    if threading.current_thread() is not threading.main_thread():     # signals are the main thread's
        return child.wait()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
