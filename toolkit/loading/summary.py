"""What a load did: one ``FileResult`` per file, gathered in a ``LoadSummary``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class FileResult:
    path: str
    kind: str
    status: str                 # loaded | skipped | refused | waiting (still being written)
    rows_read: int = 0
    rows_loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    message: str = ""
    seconds: float = 0.0


@dataclass
class LoadSummary:
    """What a load did, one ``FileResult`` per file (loaded, skipped, refused or waiting); ``to_dict()``
    gives the totals the CLI prints."""
    files: list[FileResult] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files if f.status == "loaded")

    @property
    def refused(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "refused"]

    def to_dict(self) -> dict:
        loaded = [f for f in self.files if f.status == "loaded"]
        return {
            "files_loaded": len(loaded),
            "files_skipped": sum(f.status == "skipped" for f in self.files),
            "files_refused": len(self.refused),
            "files_waiting": sum(f.status == "waiting" for f in self.files),
            "events": sum(f.rows_loaded for f in loaded if f.kind == "events"),
            "profiles": sum(f.rows_loaded for f in loaded if f.kind == "profiles"),
            "profile_updates": sum(f.rows_loaded for f in loaded if f.kind == "profile_updates"),
            "identity_mappings": sum(f.rows_loaded for f in loaded if f.kind == "identity_mappings"),
            "duplicates_dropped": self.total("duplicates"),
            "rows_quarantined": self.total("quarantined"),
            "files": [asdict(f) for f in self.files],
        }


