"""Plan files: loading, validation errors naming the field, STREAMQ_FUSE, enable/disable."""

import json

import pytest

from streamq import fusion
from streamq.fusion import _state
from streamq.fusion.plan import Plan, PlanError, load_plan

pytestmark = pytest.mark.timeout(60)

GOOD = {"version": 1, "chains": [
    {"ops": ["aten::mul", "aten::add", "aten::relu"], "kind": "vertical", "queue_label": None,
     "occurrences": 12, "saved_bytes": 805306368, "saved_us": 1840.5},
    {"ops": ["cudnn.add_tensor", "cudnn.activation_forward"], "kind": "vertical",
     "queue_label": "stream1", "occurrences": 2, "saved_bytes": 10, "saved_us": 0},
    {"ops": ["aten::mul_", "aten::add_"], "kind": "horizontal", "queue_label": None,
     "occurrences": 1, "saved_bytes": 0, "saved_us": 0.0, "pattern_id": "p7"},
]}


def test_a_valid_plan_loads_with_every_field(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(GOOD))
    plan = load_plan(path)
    assert isinstance(plan, Plan) and plan.source == str(path)
    first = plan.chains[0]
    assert first.ops == ("aten::mul", "aten::add", "aten::relu") and first.kind == "vertical"
    assert (first.queue_label, first.occurrences, first.saved_bytes, first.saved_us) == \
        (None, 12, 805306368, 1840.5)
    assert plan.chains[1].queue_label == "stream1"
    assert load_plan(GOOD).chains == plan.chains and load_plan(plan) is plan


def test_applied_chains_are_vertical_and_match_the_queue_label():
    plan = load_plan(GOOD)
    assert [ops[0] for ops in plan.applied("stream0")] == ["aten::mul"]
    assert [ops[0] for ops in plan.applied("stream1")] == ["aten::mul", "cudnn.add_tensor"]


def test_epilogue_chains_apply_their_elementwise_tail():
    plan = load_plan({"version": 1, "chains": [
        {"ops": ["cudnn.convolution_forward", "cudnn.add_tensor", "cudnn.activation_forward"],
         "kind": "epilogue"},
        {"ops": ["cublas.gemm", "aten::add_"], "kind": "epilogue"}]})       # tail of one op: nothing
    assert plan.applied(None) == (("cudnn.add_tensor", "cudnn.activation_forward"),)


def test_matcher_splits_held_ops_greedily_into_the_longest_chains():
    plan = load_plan({"version": 1, "chains": [
        {"ops": ["a", "b"], "kind": "vertical"}, {"ops": ["a", "b", "c"], "kind": "vertical"},
        {"ops": ["c", "d"], "kind": "vertical"}]})
    m = plan.matcher(None)
    assert m.segments(("a", "b", "c", "d")) == [(0, 3), (3, 4)]
    assert m.segments(("a", "b", "x", "c", "d")) == [(0, 2), (2, 3), (3, 5)]
    assert m.segments(("b", "c")) == [(0, 1), (1, 2)]
    assert ("a", "b") in m.extendable and ("a", "b", "c") not in m.extendable


@pytest.mark.parametrize("data, field", [
    ([], "a plan must be a JSON object"),
    ({"chains": []}, "missing field 'version'"),
    ({"version": 2, "chains": []}, "field 'version' must be 1"),
    ({"version": True, "chains": []}, "field 'version' must be 1"),
    ({"version": 1}, "missing field 'chains'"),
    ({"version": 1, "chains": {}}, "field 'chains' must be a list"),
    ({"version": 1, "chains": ["x"]}, "chains[0] must be an object"),
    ({"version": 1, "chains": [{"kind": "vertical"}]}, "chains[0]: missing field 'ops'"),
    ({"version": 1, "chains": [{"ops": ["a", "b"]}]}, "chains[0]: missing field 'kind'"),
    ({"version": 1, "chains": [{"ops": "a,b", "kind": "vertical"}]}, "chains[0].ops must be a list"),
    ({"version": 1, "chains": [{"ops": ["a"], "kind": "vertical"}]}, "chains[0].ops must name at least 2"),
    ({"version": 1, "chains": [{"ops": ["a", 3], "kind": "vertical"}]}, "chains[0].ops[1] must be"),
    ({"version": 1, "chains": [{"ops": ["a", ""], "kind": "vertical"}]}, "chains[0].ops[1] must be"),
    ({"version": 1, "chains": [{"ops": ["a", "b"], "kind": ""}]}, "chains[0].kind must be"),
    ({"version": 1, "chains": [{"ops": ["a", "b"], "kind": "vertical", "queue_label": 3}]},
     "chains[0].queue_label must be a string or null"),
    ({"version": 1, "chains": [{"ops": ["a", "b"], "kind": "vertical", "occurrences": -1}]},
     "chains[0].occurrences must be a non-negative integer"),
    ({"version": 1, "chains": [{"ops": ["a", "b"], "kind": "vertical", "occurrences": 2.5}]},
     "chains[0].occurrences must be a non-negative integer"),
    ({"version": 1, "chains": [{"ops": ["a", "b"], "kind": "vertical", "saved_bytes": True}]},
     "chains[0].saved_bytes must be a non-negative integer"),
    ({"version": 1, "chains": [{"ops": ["a", "b"], "kind": "vertical", "saved_us": "1"}]},
     "chains[0].saved_us must be a non-negative number"),
    ({"version": 1, "chains": [GOOD["chains"][0], {"ops": ["a", "b"], "kind": "vertical",
                                                   "saved_us": float("nan")}]},
     "chains[1].saved_us must be a non-negative number"),
])
def test_malformed_plans_name_the_field(data, field):
    with pytest.raises(PlanError) as info:
        Plan.from_dict(data)
    assert field in str(info.value)


def test_unreadable_and_non_json_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"version\": 1, \"chains\": [")
    with pytest.raises(PlanError, match="bad.json: not valid JSON"):
        load_plan(bad)
    with pytest.raises(OSError):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="plan must be"):
        load_plan(3)


def test_enable_validates_now_and_disable_turns_off(tmp_path):
    try:
        with pytest.raises(PlanError, match="missing field 'chains'"):
            fusion.enable({"version": 1})
        fusion.enable(GOOD)
        assert fusion.enabled() and fusion.active_plan().chains[0].ops[0] == "aten::mul"
        fusion.enable()
        assert fusion.enabled() and fusion.active_plan() is None
    finally:
        fusion.disable()
    assert not fusion.enabled() and fusion.active_plan() is None


@pytest.fixture
def fresh_env_state(monkeypatch):
    """Forget any explicit setting so the next use reads STREAMQ_FUSE again."""
    monkeypatch.setattr(_state, "_decided", False)
    monkeypatch.setattr(_state, "_config", None)
    yield monkeypatch
    fusion.disable()


def test_streamq_fuse_names_a_plan_file(tmp_path, fresh_env_state):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(GOOD))
    fresh_env_state.setenv("STREAMQ_FUSE", str(path))
    assert fusion.enabled() and fusion.active_plan().source == str(path)


@pytest.mark.parametrize("value, on", [("auto", True), ("1", True), ("", False), ("0", False),
                                       ("off", False)])
def test_streamq_fuse_auto_and_off(value, on, fresh_env_state):
    fresh_env_state.setenv("STREAMQ_FUSE", value)
    assert fusion.enabled() is on and fusion.active_plan() is None


def test_bad_streamq_fuse_raises_naming_the_variable(tmp_path, fresh_env_state):
    fresh_env_state.setenv("STREAMQ_FUSE", str(tmp_path / "nope.json"))
    with pytest.raises(PlanError, match="STREAMQ_FUSE="):
        fusion.enabled()


def test_explicit_setting_wins_over_the_environment(fresh_env_state):
    fresh_env_state.setenv("STREAMQ_FUSE", "auto")
    fusion.disable()
    assert not fusion.enabled()


def test_streamq_fuse_in_a_fresh_interpreter(tmp_path, python_subprocess):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(GOOD))
    proc = python_subprocess(
        "import streamq.fusion as f; p = f.active_plan(); print(f.enabled(), len(p.chains))",
        env={"STREAMQ_FUSE": str(path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "3"]
