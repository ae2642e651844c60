"""Data for the Mixpanel tests: a few days of events, profiles and cohorts, written as an emulator folder."""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

FIRST_DAY = date(2026, 10, 1)


def day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def events(days: int = 4, per_day: int = 50, first: date = FIRST_DAY, prefix: str = "e") -> list[dict]:
    out = []
    for d in range(days):
        day = first + timedelta(days=d)
        for i in range(per_day):
            out.append({"event": ["Page View", "Purchase", "Signed up"][i % 3],
                        "properties": {"time": day_start(day) + 60 * i + 7, "distinct_id": f"u{i % 17}",
                                       "$insert_id": f"{prefix}{d}-{i}", "mp_processing_time_ms": 1,
                                       "plan": "pro" if i % 2 else "free"}})
    return out


def profiles(count: int = 20) -> list[dict]:
    return [{"$distinct_id": f"u{i}", "$properties": {"$email": f"u{i}@example.com",
                                                      "$onesignal_user_id": f"ext-{i}", "tier": i % 3}}
            for i in range(count)]


COHORTS = [{"id": 11, "name": "Power users", "description": "from Mixpanel's UI", "members": ["u1", "u2", "u3"]},
           {"id": 12, "name": "Lapsed", "members": ["u4", "ghost-without-profile"]}]


def write_folder(folder: Path, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events(**kwargs)))
    (folder / "profiles.json").write_text(json.dumps({"results": profiles()}))
    (folder / "cohorts.json").write_text(json.dumps(COHORTS))
    return folder
