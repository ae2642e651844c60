"""Export planning and the removal guard: pure functions, hammered with hypothesis."""

from hypothesis import given
from hypothesis import strategies as st

from toolkit.planning import ADD, NOOP, REMOVE, Target, plan, removal_guard

ids = st.text(min_size=1, max_size=6)
targets = st.builds(Target, st.text(min_size=1, max_size=6), st.sampled_from(["external_id", "subscription_id"]))
states = st.dictionaries(ids, targets, max_size=20)


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
def test_applying_the_plan_to_the_snapshot_gives_the_wanted_state(wanted, snapshot):
    p = plan(wanted, snapshot)
    assert apply(snapshot, p) == wanted
    assert p.counts[NOOP] == sum(1 for k, v in wanted.items() if snapshot.get(k) == v)


@given(states, states)
def test_plan_is_deterministic_and_sorted(wanted, snapshot):
    p = plan(wanted, snapshot)
    assert p == plan(dict(reversed(list(wanted.items()))), dict(reversed(list(snapshot.items()))))
    assert [s.distinct_id for s in p.changes] == sorted(s.distinct_id for s in p.changes)
    assert [s.distinct_id for s in p.steps] == sorted(s.distinct_id for s in p.steps)
    assert len(p.steps) == len(p.changes) + p.counts[NOOP]


@given(states)
def test_unchanged_cohort_plans_no_changes(state):
    p = plan(state, state)
    assert p.changes == () and p.counts[NOOP] == len(state)


def test_join_leave_rejoin_and_id_change():
    a, b, b2 = Target("ext-a", "external_id"), Target("ext-b", "external_id"), Target("ext-b2", "external_id")
    p = plan({"a": a, "b": b2}, {"b": b, "c": a})
    assert [(s.distinct_id, s.operation, s.target.onesignal_id) for s in p.changes] == [
        ("a", ADD, "ext-a"), ("b", REMOVE, "ext-b"), ("b", ADD, "ext-b2"), ("c", REMOVE, "ext-a")]


def test_guard():
    t = Target("x", "external_id")
    p = plan({}, {str(i): t for i in range(6)})
    assert not removal_guard(p, 10, 0.5).ok
    assert "60%" in removal_guard(p, 10, 0.5).reason
    assert removal_guard(p, 20, 0.5).ok
    assert removal_guard(p, 10, 0.5, force=True).ok
    assert not removal_guard(p, None, 0.5).ok          # cannot be evaluated: trips
    assert removal_guard(plan({"a": t}, {}), None, 0.5).ok   # nothing to remove
