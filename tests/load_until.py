"""A load that can be killed at a named point, for the kill -9 tests (tests/helpers.py: kill_load_at).

    python tests/load_until.py DB NOW POINT PATH...

Loads PATH... into the store DB as of NOW and prints `point: <name>` at each point of the load where
one of its transactions is written but not committed (`transaction 2 written`) and where it has
committed (`transaction 2 committed`). At POINT (empty: none) it prints `stopped at <name>` and waits
to be killed. The points are the load's own transactions, counted from the start of `load`, so the
kill lands exactly where the test asked, on any machine."""

import contextlib
import signal
import sys
from datetime import datetime

from toolkit import Store, load


class AnnouncingStore(Store):
    """A store that names each transaction of the load it is given to."""

    counting = False
    count = 0
    stop_at = ""

    def announce(self, point: str) -> None:
        print(f"point: {point}", flush=True)
        if point == self.stop_at:
            print(f"stopped at {point}", flush=True)
            while True:                       # until the test's kill -9
                signal.pause()

    @contextlib.contextmanager
    def transaction(self, con=None):
        if not self.counting:
            with super().transaction(con) as c:
                yield c
            return
        self.count += 1
        n = self.count
        with super().transaction(con) as c:
            yield c
            self.announce(f"transaction {n} written")
        self.announce(f"transaction {n} committed")


if __name__ == "__main__":
    db, now, stop_at, *paths = sys.argv[1:]
    store = AnnouncingStore(db)
    store.stop_at, store.counting = stop_at, True
    load(store, paths, now=datetime.fromisoformat(now))
    print("loaded", flush=True)
