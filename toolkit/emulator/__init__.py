"""A OneSignal-compatible server on loopback, for the demo, rehearsals and tests.

In-process: ``with Emulator() as emu: ...`` (see server.py). Without a socket, for httpx clients in
tests: ``transport(Emulator())`` from transport.py. As a command:
``python -m toolkit.emulator --port 8787 --state var/onesignal.json``.
"""

from toolkit.emulator.server import Emulator
from toolkit.emulator.state import App, EmulatorError, User


def main(argv: list[str] | None = None) -> int:
    from toolkit.emulator.cli import main as cli_main

    return cli_main(argv)


__all__ = ["Emulator", "App", "User", "EmulatorError", "main"]
