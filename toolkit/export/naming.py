"""What an export is called in OneSignal: the cohort's tag key and its segment's name and filter."""

from __future__ import annotations

import hashlib
import re

MAX_SEGMENT_NAME = 128          # OneSignal's limit, in characters


SEGMENT_PREFIX = "(Mixpanel) "  # as Mixpanel's own integration shows a cohort in OneSignal


# OneSignal uses these for message personalization: "should not be used as tag keys".
RESERVED_TAG_KEYS = frozenset({"message", "notification", "subscription", "user", "template", "app", "org",
                               "dynamic_content", "data_feed", "journey", "custom_data"})


SAFE_TAG_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


def tag_key(cohort: str) -> str:
    """A short, stable tag key per cohort: readable slug plus a hash so two names never collide.

    Safe whatever the name: at most 50 characters of ``[a-z0-9_]`` after ``mp_``, so never one of
    OneSignal's reserved keys (``app``, ``user``...), nothing a Liquid template or a filter must escape
    (quotes, slashes, spaces, non-ASCII letters become ``_`` or drop). Stable: the hash is of the exact
    name, so the same cohort always gets the same key and names differing only in case get two."""
    slug = re.sub(r"[^a-z0-9]+", "_", cohort.lower()).strip("_")[:40] or "cohort"
    return f"mp_{slug}_{hashlib.sha1(cohort.encode()).hexdigest()[:6]}"


def tag_key_problem(key: str) -> str | None:
    """Why ``key`` is no tag key for an export to use (reserved by OneSignal, odd characters, too long)."""
    if key.lower() in RESERVED_TAG_KEYS:
        return f"{key!r} is reserved by OneSignal for message personalization"
    if not SAFE_TAG_KEY.fullmatch(key):
        return (f"{key!r} is not 1 to 64 lowercase letters, digits and underscores starting with a letter, "
                "which any OneSignal filter and template takes as is")
    return None


def segment_name(cohort: str) -> str:
    """``(Mixpanel) <cohort>``, as Mixpanel's own integration names the segment; for a name longer than
    OneSignal's 128 characters, its start and a short hash of the whole name: two cohorts sharing their
    first 128 characters still get two segments (a cohort's name is unique in the store)."""
    return _within_limit(SEGMENT_PREFIX + cohort, cohort)


def legacy_segment_names(cohort: str) -> list[str]:
    """What earlier versions named the cohort's segment (the bare cohort name, cut the same way): such a
    segment that filters on the cohort's tag is adopted and renamed, never duplicated."""
    return [_within_limit(cohort, cohort)]


def _within_limit(name: str, cohort: str) -> str:
    if len(name) <= MAX_SEGMENT_NAME:
        return name
    digest = hashlib.sha1(cohort.encode()).hexdigest()[:8]
    return f"{name[:MAX_SEGMENT_NAME - len(digest) - 2].rstrip()} ~{digest}"


def segment_filters(key: str) -> list[dict]:
    return [{"field": "tag", "key": key, "relation": "exists"}]


def _same_filters(found, wanted: list[dict]) -> bool:
    if not isinstance(found, list) or len(found) != len(wanted):
        return False
    return all(isinstance(f, dict) and all(f.get(k) == v for k, v in w.items())
               for f, w in zip(found, wanted, strict=True))
