"""Export planning and the removal guard: pure functions, hammered with hypothesis against the
member-by-member oracle (tests/plan_oracle.py)."""

from hypothesis import given
from hypothesis import strategies as st
from plan_oracle import plan as oracle

from toolkit.planning import ADD, NOOP, REMOVE, Fingerprint, Target, plan, removal_guard, unchanged

ids = st.text(min_size=1, max_size=6)
targets = st.builds(Target, st.text(min_size=1, max_size=6), st.sampled_from(["external_id", "subscription_id"]))
states = st.dictionaries(ids, targets, max_size=20)


def from_rows(wanted, snapshot):
    """The plan from the rows that differ, as the store hands them over (in any order)."""
    adds = [(d, t) for d, t in reversed(list(wanted.items())) if snapshot.get(d) != t]
    removes = [(d, t) for d, t in snapshot.items() if wanted.get(d) != t]
    return plan(adds, removes, len(wanted) - len(adds))


def apply(snapshot, p):
    state = dict(snapshot)
    for step in p.changes:
        if step.operation == REMOVE:
            assert state.pop(step.distinct_id) == step.target
        elif step.operation == ADD:
            assert step.distinct_id not in state
            state[step.distinct_id] = step.target
    return state


@given(states, states)
def test_the_plan_from_the_changed_rows_is_the_oracles(wanted, snapshot):
    assert from_rows(wanted, snapshot) == oracle(wanted, snapshot)


@given(states, states)
def test_applying_the_plan_to_the_snapshot_gives_the_wanted_state(wanted, snapshot):
    p = from_rows(wanted, snapshot)
    assert apply(snapshot, p) == wanted
    assert p.counts[NOOP] == sum(1 for k, v in wanted.items() if snapshot.get(k) == v)


@given(states, states)
def test_plan_is_deterministic_and_sorted(wanted, snapshot):
    p = from_rows(wanted, snapshot)
    assert p == from_rows(dict(reversed(list(wanted.items()))), dict(reversed(list(snapshot.items()))))
    assert [s.distinct_id for s in p.changes] == sorted(s.distinct_id for s in p.changes)
    assert p.of(ADD) + p.of(REMOVE) == sorted(p.changes, key=lambda s: s.operation)


@given(states)
def test_unchanged_cohort_plans_no_changes(state):
    p = from_rows(state, state)
    assert p.changes == () and p.counts[NOOP] == len(state)


def test_equal_fingerprints_plan_nothing_and_different_ones_defer_to_the_rows():
    assert unchanged(Fingerprint(3, 42), Fingerprint(3, 42)).counts == {ADD: 0, REMOVE: 0, NOOP: 3}
    assert unchanged(Fingerprint(3, 42), Fingerprint(3, 43)) is None
    assert unchanged(Fingerprint(3, 42), None) is None          # none kept: the rows decide


def test_join_leave_rejoin_and_id_change():
    a, b, b2 = Target("ext-a", "external_id"), Target("ext-b", "external_id"), Target("ext-b2", "external_id")
    p = from_rows({"a": a, "b": b2}, {"b": b, "c": a})
    assert [(s.distinct_id, s.operation, s.target.onesignal_id) for s in p.changes] == [
        ("a", ADD, "ext-a"), ("b", REMOVE, "ext-b"), ("b", ADD, "ext-b2"), ("c", REMOVE, "ext-a")]


def test_guard():
    t = Target("x", "external_id")
    p = from_rows({}, {str(i): t for i in range(6)})
    assert not removal_guard(p, 10, 0.5).ok
    assert "60%" in removal_guard(p, 10, 0.5).reason
    assert removal_guard(p, 20, 0.5).ok
    assert removal_guard(p, 10, 0.5, force=True).ok
    assert not removal_guard(p, None, 0.5).ok          # cannot be evaluated: trips
    assert removal_guard(from_rows({"a": t}, {}), None, 0.5).ok   # nothing to remove
