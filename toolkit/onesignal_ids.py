"""Ground level: the OneSignal id rules and the reasons a cohort member cannot be exported, worded once.

Loading (the facts it stores), matching (its SQL), the CLI and the widgets all read them from here, so
this module imports nothing from the toolkit.

An id is usable when it is a string, not blank, at most ``MAX_ID_LENGTH`` characters (code points); a
UUID is a Subscription (Player) ID under ``id_type="auto"``.
"""

from __future__ import annotations

USER_ID_PROPERTY = "$onesignal_user_id"      # the profile property the seed names; a sync may choose another
MAX_ID_LENGTH = 128
# Python's re and DuckDB's RE2 agree on these ASCII classes, so the SQL and the test oracle share them.
UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
BLANKS = "\t\n\x0b\f\r "
ID_TYPES = ("auto", "external_id", "subscription_id")
COHORT_LIMIT = 10_000_000        # users one OneSignal cohort export holds

# code -> one line a person reads, in the order matching checks them (the first that applies is reported).
REASONS = {
    "anonymous": "no profile properties: Mixpanel exports identified profiles only",
    "missing_user_id": f"the profile has no {USER_ID_PROPERTY} (or it is null)",
    "unusable_value": "the id is not a string, is blank, too long, or not a UUID where one is needed",
    "duplicate": "another profile holds the same OneSignal id and keeps it",
    "over_limit": "beyond the most users one OneSignal cohort export can hold",
}
