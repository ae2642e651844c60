"""Synthetic Mixpanel-shaped data: raw event export, Engage profile export, profile updates.

Not part of ``import toolkit``: the CLI (``toolkit generate``), the tests and the benchmarks import it.

``generate(out_dir, events=...)`` writes three files that look like what Mixpanel hands out:

- ``events.jsonl`` (``events.jsonl.gz`` with ``compress``): raw export lines. Product events; Original ID
  Merge users (``$identify`` from a UUIDv4 anon id - a few from a non-UUIDv4 or an already merged anon id -,
  ``$create_alias`` including alias chains, ``$merge``); Simplified ID Merge users (``$device:<uuid>`` then
  ``$device_id`` + ``$user_id``); anonymous-only users; OneSignal message events of every catalog name
  (``toolkit.onesignal_events``) sent under the value of the profile's ``$onesignal_user_id``; duplicates
  and repeats (events.py).
- ``profiles.json``: Engage query results, one page of up to 1,000 profiles (the API's page size) after
  another. ``$onesignal_user_id`` is an External ID (the user id or ``ext_...``), a Subscription UUID,
  missing, unusable (a number, a blank string, an over-long string) or shared by two profiles.
- ``profile_updates.jsonl``: Ingestion API ``/engage`` updates, one operation each, every operation kind,
  some sent under an alias id, some setting ``$onesignal_user_id`` for users absent from ``profiles.json``.

Everything comes from one ``random.Random(seed)`` consumed in a fixed order, and no clock is read: the same
arguments give the same bytes (gzip included: no name, mtime 0).

Modules, from the ground up: ``values`` (random draws, the JSON encoder), ``period`` (the time span),
``catalog`` (vocabulary, product event properties), ``people`` (users, their ids and OneSignal id),
``events`` (a user's event lines), ``profiles`` (profile and update records), ``writer`` (files, Engage
pages), ``dataset`` (one run: ``generate``), ``sample`` (data/sample/: ``write_sample``).
"""

from toolkit.synthetic.catalog import ONESIGNAL_ID_KINDS, UPDATE_OPS
from toolkit.synthetic.dataset import default_profiles, generate
from toolkit.synthetic.sample import SAMPLE_FILES, write_sample
from toolkit.synthetic.writer import EVENTS_FILE, EVENTS_FILE_GZ, PROFILES_FILE, UPDATES_FILE

__all__ = ["EVENTS_FILE", "EVENTS_FILE_GZ", "PROFILES_FILE", "UPDATES_FILE", "UPDATE_OPS", "ONESIGNAL_ID_KINDS",
           "SAMPLE_FILES", "default_profiles", "generate", "write_sample"]
