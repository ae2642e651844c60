"""What a run wrote, counted as it goes: the counts ``generate`` returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from toolkit.synthetic.catalog import ONESIGNAL_ID_KINDS, UPDATE_OPS

EVENT_KINDS = ("product", "identity", "onesignal", "duplicate", "repeat_no_insert_id")


@dataclass
class Tally:
    event_kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_KINDS, 0))
    event_names: dict[str, int] = field(default_factory=dict)  # by JSON-encoded name
    personas: dict[str, int] = field(default_factory=dict)  # the generated crowd (named personas not included)
    onesignal_ids: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ONESIGNAL_ID_KINDS, 0))
    update_ops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UPDATE_OPS, 0))

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            "event_kinds": dict(self.event_kinds),
            "event_names": {json.loads(k): v for k, v in sorted(self.event_names.items())},
            "personas": dict(sorted(self.personas.items())),
            "onesignal_ids": dict(self.onesignal_ids),  # crowd profiles in profiles.json, by id kind
            "update_ops": dict(self.update_ops),
        }
