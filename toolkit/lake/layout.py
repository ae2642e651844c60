"""Where a lake's files are: a Parquet lake (``toolkit lake export``) or a Mixpanel Data Pipelines JSON
folder, told apart by what the folder holds. Nothing is read here but names."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import LakeError

MANIFEST = "_toolkit_lake.json"       # written last by `toolkit lake export`
EVENTS, PROFILES, MAPPINGS = "events", "profiles", "identity_mappings"
# Mixpanel Data Pipelines' table folders under <root>/<project_id>/
PIPELINE_EVENTS, PIPELINE_PEOPLE, PIPELINE_MAPPINGS = "mp_master_event", "mp_people_data", "mp_identity_mappings_data"
JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")

WHAT_A_LAKE_IS = (f"expected {EVENTS}/date=YYYY-MM-DD/*.parquet (written by toolkit lake export) or "
                  f"<project_id>/{PIPELINE_EVENTS}/YYYY/MM/DD/*.json (Mixpanel Data Pipelines)")


@dataclass(frozen=True)
class Lake:
    """A lake's files: ``kind`` "parquet" or "pipelines"; the files of each table (profiles and
    mappings may have none); ``deduplicated``: written from a store, so every event key is there once."""
    root: Path
    kind: str
    events: tuple[Path, ...]
    profiles: tuple[Path, ...]
    mappings: tuple[Path, ...]
    deduplicated: bool = False

    def folder(self, table: str) -> Path:
        """The folder holding ``table`` ("events", "profiles", "mappings")."""
        names = ({"events": EVENTS, "profiles": PROFILES, "mappings": MAPPINGS} if self.kind == "parquet" else
                 {"events": PIPELINE_EVENTS, "profiles": PIPELINE_PEOPLE, "mappings": PIPELINE_MAPPINGS})
        return self.root / names[table]

    def __str__(self) -> str:
        return str(self.root)


def find(path: str | os.PathLike) -> Lake:
    """The lake at ``path``: a folder written by ``toolkit lake export``, a Data Pipelines bucket folder
    (holding one ``<project_id>`` folder) or that project folder itself. A LakeError names the path
    when it is missing or holds no events."""
    root = Path(path).expanduser()
    if not root.exists():
        raise LakeError(f"lake {root} does not exist")
    if not root.is_dir():
        raise LakeError(f"lake {root} is not a folder; {WHAT_A_LAKE_IS}")
    if (root / EVENTS).is_dir():
        events = _files(root / EVENTS, (".parquet",))
        if not events:
            raise LakeError(f"lake {root} holds no events: {root / EVENTS} has no .parquet files")
        return Lake(root, "parquet", events, _files(root / PROFILES, (".parquet",)),
                    _files(root / MAPPINGS, (".parquet",)), _deduplicated(root, events))
    project = _pipelines_project(root)
    if project is None:
        raise LakeError(f"lake {root} holds no events: {WHAT_A_LAKE_IS}")
    events = _files(project / PIPELINE_EVENTS, JSON_SUFFIXES)
    if not events:
        raise LakeError(f"lake {root} holds no events: {project / PIPELINE_EVENTS} has no .json or .json.gz files")
    return Lake(project, "pipelines", events, _files(project / PIPELINE_PEOPLE, JSON_SUFFIXES),
                _files(project / PIPELINE_MAPPINGS, JSON_SUFFIXES))


def _pipelines_project(root: Path) -> Path | None:
    if (root / PIPELINE_EVENTS).is_dir():
        return root
    projects = sorted(p for p in root.iterdir() if (p / PIPELINE_EVENTS).is_dir())
    if len(projects) > 1:
        raise LakeError(f"lake {root} holds the Data Pipelines folders of {len(projects)} projects ("
                        + ", ".join(p.name for p in projects) + "); point at one project's folder")
    return projects[0] if projects else None


def _files(folder: Path, suffixes: tuple[str, ...]) -> tuple[Path, ...]:
    """Data files under ``folder`` (any depth), sorted; hidden and underscore files (markers) skipped."""
    if not folder.is_dir():
        return ()
    return tuple(sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes)
                        and not p.name.startswith((".", "_"))))


def _deduplicated(root: Path, events: tuple[Path, ...]) -> bool:
    """Whether these events are the ones `toolkit lake export` wrote deduplicated: its manifest lists
    exactly these files (a file added since may repeat an event, so the lake is deduplicated again)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    listed = manifest.get("event_files") if isinstance(manifest, dict) else None
    return bool(manifest.get("deduplicated")) and listed == [p.relative_to(root).as_posix() for p in events]
