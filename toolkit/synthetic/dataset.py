"""One data set: the crowd of users, written one user at a time (events, then profile, then updates)
through bounded buffers, so that memory does not grow with the number of events."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import UsageError
from toolkit.synthetic.events import EventStream
from toolkit.synthetic.people import Crowd
from toolkit.synthetic.period import Period, iso
from toolkit.synthetic.profiles import Profile, ProfileMaker, Update
from toolkit.synthetic.tally import Tally
from toolkit.synthetic.writer import EVENTS_FILE, EVENTS_FILE_GZ, PROFILES_FILE, UPDATES_FILE, EngagePages, OutputFile

EVENTS_PER_PROFILE = 20  # default profiles = events // 20; plus 1 anonymous user per 8 profiles
FLUSH_LINES = 4096


def default_profiles(events: int) -> int:
    """The profile count used when ``profiles`` is not given: one profile per 20 events."""
    return max(1, events // EVENTS_PER_PROFILE)


@dataclass
class Named:
    """Users written before the crowd (data/sample/'s personas), already serialized as event lines."""

    events: list[str] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)


# Makes the named users of a data set, from its period and token; counts them into the tally.
NamedUsers = Callable[[Period, str, Tally], Named]


def generate(out_dir: str | Path, *, events: int, profiles: int | None = None, seed: int = 7,
             start: dt.date = dt.date(2026, 9, 1), months: int = 2, compress: bool = False,
             time_in_ms: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Write events, profiles and profile updates into ``out_dir``; return counts of what was written.

    ``events`` is the exact number of event lines (duplicates included), spread over ``months`` calendar
    months from ``start`` (UTC). ``profiles`` defaults to ``events // 20``; one anonymous user per 8 profiles
    and one updates-only user per 100 profiles come on top. ``progress`` is called with the number of event
    lines written so far. Files are written under a ``.part`` name and renamed when complete.
    """
    return write_dataset(out_dir, events=events, profiles=profiles, seed=seed, start=start, months=months,
                         compress=compress, time_in_ms=time_in_ms, progress=progress)


def write_dataset(out_dir: str | Path, *, events: int, profiles: int | None, seed: int, start: dt.date, months: int,
                  compress: bool, time_in_ms: bool, progress: Callable[[int], None] | None,
                  named: NamedUsers | None = None) -> dict:
    """``generate``, with ``named`` users written first (their events count toward ``events``)."""
    if isinstance(events, bool) or not isinstance(events, int) or events < 0:
        raise UsageError(f"events must be a non-negative integer, got {events!r}")
    if profiles is None:
        profiles = default_profiles(events)
    if isinstance(profiles, bool) or not isinstance(profiles, int) or profiles < 0:
        raise UsageError(f"profiles must be a non-negative integer, got {profiles!r}")
    if not isinstance(months, int) or months < 1:
        raise UsageError(f"months must be a positive integer, got {months!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events_name = EVENTS_FILE_GZ if compress else EVENTS_FILE

    # Everything comes from one Random consumed in a fixed order: these draws come first, in this order.
    rng = random.Random(seed)
    period = Period.of(start, months, time_in_ms)
    tally = Tally()
    token = f"{rng.getrandbits(128):032x}"
    session_id = f"{rng.randrange(10**9)}-{rng.getrandbits(128):032x}"
    stream = EventStream(rng, period, tally)
    makers = ProfileMaker(rng, period, token, tally)
    crowd = Crowd(rng, period)

    files: list[OutputFile] = []
    try:
        ev = OutputFile(out / events_name, compress)
        files.append(ev)
        pr = OutputFile(out / PROFILES_FILE)
        files.append(pr)
        up = OutputFile(out / UPDATES_FILE)
        files.append(up)
        first = named(period, token, tally) if named else Named()
        pages = EngagePages(pr, session_id, total=len(first.profiles) + profiles)
        ev.extend(first.events[:events])
        remaining = events - min(len(first.events), events)
        for p in first.profiles:
            pages.add(p.to_json())
        up.extend([u.to_json() + "\n" for u in first.updates])

        def flush() -> None:
            for f in files:
                f.flush()
            if progress is not None:
                progress(ev.lines)

        left = {"profile": profiles, "anonymous": profiles // 8, "ghost": profiles // 100}
        users_left = sum(left.values())
        n = 0
        while users_left:
            r = rng.randrange(users_left)
            role = "profile" if r < left["profile"] else \
                "anonymous" if r < left["profile"] + left["anonymous"] else "ghost"
            left[role] -= 1
            n += 1
            u = crowd.user(n, role)
            tally.personas[u.persona] = tally.personas.get(u.persona, 0) + 1
            k = _budget(rng, remaining, users_left)
            users_left -= 1
            remaining -= k
            ev.extend(stream.lines(u, k))
            if role == "profile":
                tally.onesignal_ids[u.onesignal.kind] += 1
                pages.add(makers.profile(u).to_json())
            if role != "anonymous":
                up.extend([x.to_json() + "\n" for x in makers.updates(u)])
            if len(ev.buf) >= FLUSH_LINES:
                flush()
        while remaining:  # no users at all (profiles=0): the events go to anonymous devices
            n += 1
            u = crowd.user(n, "anonymous")
            tally.personas[u.persona] = tally.personas.get(u.persona, 0) + 1
            k = min(remaining, 1 + int(rng.expovariate(1 / 15)))
            ev.extend(stream.lines(u, k))
            remaining -= k
            if len(ev.buf) >= FLUSH_LINES:
                flush()
        pages.close()
        sizes = {f.path.name: f.close() for f in files}
    except BaseException:
        for f in files:
            f.abort()
        raise
    if progress is not None:
        progress(ev.lines)
    return {
        "out_dir": str(out),
        "seed": seed,
        "start": iso(period.start_ms)[:10],
        "end": iso(period.end_ms)[:10],  # exclusive
        "time_unit": "ms" if time_in_ms else "s",
        "files": {
            events_name: {"lines": ev.lines, "bytes": sizes[events_name]},
            PROFILES_FILE: {"profiles": pages.count, "pages": pages.pages, "bytes": sizes[PROFILES_FILE]},
            UPDATES_FILE: {"lines": up.lines, "bytes": sizes[UPDATES_FILE]},
        },
        "events": ev.lines,
        "profiles": pages.count,
        "profile_updates": up.lines,
        **tally.counts(),
    }


def _budget(rng: random.Random, remaining: int, users_left: int) -> int:
    """Events for the next user: exponential around the running mean, 3 % heavy users, sums exactly."""
    if users_left <= 1:
        return remaining
    mean = remaining / users_left
    if rng.random() < 0.03:
        k = int(mean * (5 + rng.random() * 10))
    else:
        k = int(rng.expovariate(1 / (mean * 0.72 + 0.5)) + 0.5)
    return min(k, remaining)
