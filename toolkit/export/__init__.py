"""Exporting a cohort to OneSignal, once or as a dynamic sync: a tag per cohort, a segment on that tag.

A run follows one ``ExportSettings``, built once by ``settings`` from the cohort's registration and
the caller's overrides. It evaluates who is exportable now, plans the difference against the snapshot
of the last successful export (``toolkit.planning``), checks the removal guard (``preview_export`` is
this much, and no more: it sends and writes nothing), makes sure the segment exists (a free plan
fails here, before any user is touched), then sets the tag on added users and clears it on removed
ones. Each user's outcome is written as it arrives, in small transactions, and the snapshot advances
only for what succeeded: a killed run loses nothing, and the next run converges. Users not in
OneSignal are reported and never created. Two runs of one cohort never overlap: a run holds a lock
file beside the store (flock, released by the kernel when its process dies), so a stale "running"
record never blocks, whatever process now has its pid.

A package of one concern per module: ``naming`` (tag keys, segment names), ``registry`` (the stored
registrations and app limits), ``run_settings`` (``ExportSettings``), ``wanted`` (who is exportable, the plan
and guard), ``tag_caps`` (the app's data-tag cap), ``preview``, ``lock`` (one run per cohort), ``records``
(run records), ``segments``, ``results`` (the result writer), ``runner`` (a run), ``fates`` (what a run did to
each member) and ``states`` (active, paused, stopped; the per-sync overview). This module re-exports
what callers use.
"""

from toolkit.errors import ExportError
from toolkit.export.fates import MemberFates, latest_run, member_fates
from toolkit.export.lock import _run_lock
from toolkit.export.naming import segment_name, tag_key, tag_key_problem
from toolkit.export.preview import ExportPreview, preview_export, preview_targets
from toolkit.export.records import RunRecord, record_failure, runs
from toolkit.export.registry import app_tag_limit, due, follow_app, list_exports, registration, set_tag_limit, stop
from toolkit.export.results import FLUSH_EVERY
from toolkit.export.run_settings import ExportSettings, register, settings
from toolkit.export.runner import rehearse, run
from toolkit.export.segments import FREE_PLAN_MESSAGE
from toolkit.export.states import overview, pause, paused, resume, resume_all, state_of
from toolkit.export.wanted import RECHECK_ABSENT, Exportable, _plan, exportable, snapshot, targets

__all__ = [
    "ExportError",
    "ExportPreview",
    "ExportSettings",
    "Exportable",
    "FLUSH_EVERY",
    "FREE_PLAN_MESSAGE",
    "MemberFates",
    "RECHECK_ABSENT",
    "RunRecord",
    "_plan",
    "_run_lock",
    "app_tag_limit",
    "due",
    "exportable",
    "follow_app",
    "latest_run",
    "list_exports",
    "member_fates",
    "overview",
    "pause",
    "paused",
    "preview_export",
    "preview_targets",
    "record_failure",
    "rehearse",
    "register",
    "registration",
    "resume",
    "resume_all",
    "run",
    "runs",
    "segment_name",
    "set_tag_limit",
    "settings",
    "snapshot",
    "state_of",
    "stop",
    "tag_key",
    "tag_key_problem",
    "targets",
]
