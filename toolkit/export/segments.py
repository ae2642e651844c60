"""The cohort's OneSignal segment: made sure of before any user is tagged (a free plan is refused here),
adopted by name or from an earlier version's name, never duplicated."""

from __future__ import annotations

import logging

from toolkit.errors import ExportError
from toolkit.export.naming import _same_filters, legacy_segment_names, segment_filters, segment_name
from toolkit.export.run_settings import ExportSettings
from toolkit.onesignal import Conflict, NotFound, OneSignalClient, PlanRefused, SegmentLimitReached

log = logging.getLogger("toolkit.export")

FREE_PLAN_MESSAGE = "App may not submit cohort updates from Mixpanel"   # Mixpanel's words, kept exactly


async def _ensure_segment(con, client: OneSignalClient, settings: ExportSettings) -> str:
    """The segment must exist before any user is tagged; a free plan is refused here. Returns its id.

    Without a known id, a segment of that name is looked for first and adopted if it filters on this
    cohort's tag: a run killed between creating it and saving its id, or a rebuilt store, left it."""
    # From the cohort, not the stored name: a registration made before names were kept unique heals.
    name, filters = segment_name(settings.cohort), segment_filters(settings.tag_key)
    try:
        if settings.segment_id:
            try:
                await client.update_segment(settings.segment_id, name, filters)
                return settings.segment_id
            except NotFound:
                pass                          # deleted in OneSignal: find or create it again
        segment_id = await _adopt_segment(client, settings, name, filters)
        if segment_id is None:
            segment_id = await _adopt_legacy_segment(client, settings, name, filters)
        if segment_id is None:
            try:
                segment_id = await client.create_segment(name, filters)
            except Conflict:                  # made meanwhile (another run, a person): look again
                segment_id = await _adopt_segment(client, settings, name, filters)
                if segment_id is None:
                    raise
    except PlanRefused:                       # decided from OneSignal's status and words, never the name
        raise ExportError(FREE_PLAN_MESSAGE) from None
    except SegmentLimitReached as exc:
        held = (f"{exc.limit} segments, as many as its plan allows" if exc.limit
                else "as many segments as its plan allows")
        raise ExportError(
            f"cohort {settings.cohort!r}: OneSignal app {settings.app_id} already has {held} (Free: 6), so the "
            f"segment {name!r} cannot be created and no user was updated. Delete a segment the app no longer "
            "uses in OneSignal (Audience > Segments), or move the app to a plan with more segments; then run the "
            "export again.") from None
    # Saved at once where this export is already registered for this app (a new registration is
    # saved with the id when the run succeeds); a kill before this line is recovered by name.
    con.execute("UPDATE exports SET segment_id = ?, segment_name = ? WHERE cohort = ? AND app_id = ?",
                [segment_id, name, settings.cohort, settings.app_id])
    return segment_id


async def _adopt_segment(client: OneSignalClient, settings: ExportSettings, name: str,
                         filters: list[dict]) -> str | None:
    """The id of the app's segment called ``name`` if it is this cohort's (it filters on the cohort's
    tag); None if there is none; an error naming it if one of that name filters on something else."""
    for found in [s for s in await client.list_segments() if s.get("name") == name]:
        try:
            details = await client.get_segment(found["id"])
        except NotFound:
            continue                          # deleted since the list
        if _same_filters(details.get("filters"), filters):
            return found["id"]
        raise ExportError(
            f"cohort {settings.cohort!r}: OneSignal app {settings.app_id} already has a segment named {name!r} "
            f"(id {found['id']}) that does not filter on this cohort's tag {settings.tag_key!r}, so it was "
            "not made by this export and is left alone. Rename or delete that segment in OneSignal, or "
            "rename the cohort.")
    return None


async def _adopt_legacy_segment(client: OneSignalClient, settings: ExportSettings, name: str,
                                filters: list[dict]) -> str | None:
    """A segment an earlier version made for this cohort under its old name (the bare cohort name): it
    is adopted and renamed in place (its id, and so the messages and journeys using it, stay), so an
    existing export never gets a second segment. A segment of an old name that filters on anything else
    is a person's own and is left alone."""
    old_names = set(legacy_segment_names(settings.cohort)) - {name}
    for found in [s for s in await client.list_segments() if s.get("name") in old_names]:
        try:
            details = await client.get_segment(found["id"])
        except NotFound:
            continue
        if _same_filters(details.get("filters"), filters):
            await client.update_segment(found["id"], name, filters)
            log.warning("cohort %r: its OneSignal segment %r is renamed %r, as Mixpanel's integration names "
                        "it (same segment id; messages sent through the API by segment name need the new name)",
                        settings.cohort, found.get("name"), name)
            return found["id"]
    return None
