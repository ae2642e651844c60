"""The `toolkit` command run in this process, through ``toolkit.cli.main``: what ``python -m toolkit ARGS``
does, without a new interpreter per call. Tests about the process itself (the exit status a shell sees,
a closed pipe, signals, another process holding the store) still start one."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.cli import main


@dataclass(frozen=True)
class Ran:
    """The fields of subprocess.CompletedProcess that the tests read."""

    returncode: int
    stdout: str
    stderr: str


def toolkit(*args: object, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> Ran:
    """Run the command with ``env`` laid over os.environ and in ``cwd``, for this call only: the
    environment (which a command may change, as the demo does) and the directory are restored after."""
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return Ran(code, out.getvalue(), err.getvalue())
