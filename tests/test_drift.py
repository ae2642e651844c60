"""Drift classification (pure): the snapshot's tagged members against the users OneSignal's CSV export shows
and the views read for the members it does not show."""

import pytest

from toolkit.drift import Member, SeenUser, classify, users_from_rows
from toolkit.errors import ExportError

KEY = "mixpanel_buyers"


def row(subscription, external="", tags=None):
    import json

    return {"id": subscription, "external_user_id": external, "tags": json.dumps(tags or {})}


def test_rows_of_one_external_id_are_one_user_and_anonymous_rows_users_of_their_own():
    users = users_from_rows([row("s1", "u1"), row("s2", "u1", {KEY: "1"}), row("s3"), row("s4", tags={KEY: "1"}),
                             row("s5", "u2", {KEY: ""})], KEY)
    assert users == [SeenUser("u1", ("s1", "s2"), True), SeenUser("u2", ("s5",), False),
                     SeenUser(None, ("s3",), False), SeenUser(None, ("s4",), True)]


def test_tags_that_are_not_a_json_object_are_refused_with_line_and_subscription():
    with pytest.raises(ExportError, match=r"line 3 \(subscription 's2'\).*not a JSON object"):
        users_from_rows([row("s1", "u1"), {"id": "s2", "external_user_id": "u2", "tags": f'["{KEY}"'}], KEY)


def test_each_kind_of_drift():
    members = [Member("d-in", "u-in", "external_id"), Member("d-lost", "u-lost", "external_id"),
               Member("d-sub", "s-gone", "subscription_id"), Member("d-subok", "s-ok", "subscription_id"),
               Member("d-nosub", "u-nosub", "external_id"), Member("d-deleted", "u-deleted", "external_id"),
               Member("d-nosub-lost", "u-nosub-lost", "external_id")]
    seen = [SeenUser("u-in", ("a",), True), SeenUser("u-lost", ("b",), False), SeenUser(None, ("s-ok",), True),
            SeenUser("u-outside", ("c",), True), SeenUser(None, ("s-anon",), True), SeenUser("u-other", ("d",), False)]
    first = classify(members, seen, tag_key=KEY)
    assert [m.distinct_id for m in first.unseen] == ["d-deleted", "d-nosub", "d-nosub-lost"]
    views = {("external_id", "u-nosub"): {KEY: "1"}, ("external_id", "u-deleted"): None,
             ("external_id", "u-nosub-lost"): {"other": "x"}}
    found = classify(members, seen, views, tag_key=KEY)
    assert found.unseen == [] and found.in_sync == 3 and found.drifted
    assert found.tagged_outside == [("external_id", "u-outside"), ("subscription_id", "s-anon")]
    assert [m.distinct_id for m in found.lost_tag] == ["d-lost", "d-nosub-lost"]
    assert [m.distinct_id for m in found.deleted] == ["d-deleted", "d-sub"]     # a Player ID no row shows is gone


def test_no_drift_when_both_sides_agree():
    found = classify([Member("d1", "u1", "external_id"), Member("d2", "s2", "subscription_id")],
                     [SeenUser("u1", ("s1",), True), SeenUser("u9", ("s2",), True)], tag_key=KEY)
    assert not found.drifted and found.in_sync == 2


def test_untagged_rows_naming_no_member_are_not_kept():
    rows = [row("s1", "u1"), row("s2", "u2", {KEY: "1"}), row("s3"), row("s4", "u4"), row("s5")]
    users = users_from_rows(rows, KEY, relevant={"u4", "s5"})
    assert users == [SeenUser("u2", ("s2",), True), SeenUser("u4", ("s4",), False), SeenUser(None, ("s5",), False)]
