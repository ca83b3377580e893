"""The peephole window on a plain serial queue: holding, flushing, plans, aliasing, the log.

The CUDA facade calls ``flush()`` at every synchronization, event, host access
and non-fusable op; these tests play the facade's part with the window API.
"""

import json
import logging

import numpy as np
import pytest
from fusion_helpers import assert_same_bits, run_unfused, run_window

import streamq
from streamq import fusion, kernels, trace

pytestmark = pytest.mark.timeout(120)

N = 64


def arrays(k, n=N, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


def mul_add_relu(a, b, c, t1, t2, t3):
    return [("aten::mul", (a, b), {"out": t1}),
            ("aten::add", (t1, c), {"out": t2}),
            ("aten::relu", (t2,), {"out": t3})]


def expected_of(calls_factory, k_in, k_out):
    ins = arrays(k_in)
    outs = [np.zeros(N, np.float32) for _ in range(k_out)]
    run_unfused(calls_factory(*ins, *outs))
    return outs


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------- flushing ---

def test_nothing_is_enqueued_until_flush(auto_fusion, queue):
    a, b, c = arrays(3)
    t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
    w = fusion.FusionWindow(queue)
    assert all(w.offer(*call) for call in mul_add_relu(a, b, c, t1, t2, t3))
    assert w.pending == ("aten::mul", "aten::add", "aten::relu")
    assert queue.synchronize(timeout=10)
    assert not t3.any() and not t1.any()          # held, not run
    tasks = w.flush()
    assert [t.name for t in tasks] == ["fused[aten::mul+aten::add+aten::relu]"]
    assert w.pending == () and w.flush() == []
    assert queue.synchronize(timeout=60)
    for got, want in zip((t1, t2, t3), expected_of(mul_add_relu, 3, 3)):
        assert_same_bits(got, want)


def test_non_fusable_op_is_refused_and_held_ops_stay_for_the_callers_flush(auto_fusion, queue):
    a, b = arrays(2)
    t = np.zeros(N, np.float32)
    w = fusion.FusionWindow(queue)
    assert w.offer("aten::mul", (a, b), {"out": t})
    s = np.zeros((), np.float32)
    assert w.offer("aten::sum", (t,), {"out": s}) is False      # not elementwise
    assert w.offer("aten::mul", (a.astype(np.int32), 2), {"out": np.zeros(N, np.int32)}) is False
    assert w.pending == ("aten::mul",)
    tasks = w.flush()
    assert [t_.name for t_ in tasks] == ["aten::mul"]        # a lone op runs unfused
    kernels.get("aten::sum")(t, out=s)                        # the caller then launches it
    assert queue.synchronize(timeout=30)
    np.testing.assert_array_equal(t, a * b)


def test_work_after_a_flush_sees_fused_results(auto_fusion, queue):
    """Event record, a host task, a sync: each comes after flush, so after the fused kernel."""
    a, b, c = arrays(3)
    outs = [np.zeros(N, np.float32) for _ in range(3)]
    w = fusion.FusionWindow(queue)
    for call in mul_add_relu(a, b, c, *outs):
        w.offer(*call)
    w.flush()                                        # facade: before cudaEventRecord
    event = queue.record_event()
    seen = queue.submit(lambda: outs[2].copy())      # a host function later on the stream
    assert event.synchronize(timeout=60)
    assert_same_bits(seen.result(timeout=60), expected_of(mul_add_relu, 3, 3)[2])


def test_a_broken_dataflow_link_enqueues_held_ops_first(auto_fusion, queue, tmp_path):
    a, b, c, d = arrays(4)
    t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
    w = fusion.FusionWindow(queue)
    trace.enable(tmp_path / "log.jsonl")
    try:
        assert w.offer("aten::mul", (a, b), {"out": t1})
        assert w.offer("aten::add", (t1, c), {"out": t2})
        assert w.offer("aten::mul", (d, d), {"out": t3})      # reads neither: new chain
        assert w.pending == ("aten::mul",)
        assert w.offer("aten::relu_", (t3,), {})
        w.flush()
        assert queue.synchronize(timeout=60)
        trace.flush()
    finally:
        trace.disable()
    names = [r["name"] for r in read_log(tmp_path / "log.jsonl") if r.get("kind") == "kernel"]
    assert names == ["fused[aten::mul+aten::add]", "fused[aten::mul+aten::relu_]"]
    np.testing.assert_array_equal(t2, a * b + c)
    np.testing.assert_array_equal(t3, np.maximum(d * d, 0))


def test_max_ops_bounds_a_fused_kernel(auto_fusion, queue):
    a, b = arrays(2)
    t = np.zeros(N, np.float32)
    w = fusion.FusionWindow(queue, max_ops=2)
    assert w.offer("aten::mul", (a, b), {"out": t})
    assert w.offer("aten::relu_", (t,), {})
    assert w.offer("aten::mul_", (t, 2.0), {})
    assert w.pending == ("aten::mul_",)
    assert [x.name for x in w.flush()] == ["aten::mul_"]
    assert queue.synchronize(timeout=60)
    np.testing.assert_array_equal(t, np.maximum(a * b, 0) * 2)


def test_disable_while_holding_still_runs_held_ops(queue):
    fusion.enable()
    try:
        a, b = arrays(2)
        t = np.zeros(N, np.float32)
        w = fusion.FusionWindow(queue)
        assert w.offer("aten::mul", (a, b), {"out": t}) and w.offer("aten::relu_", (t,), {})
        fusion.disable()
        assert w.offer("aten::mul_", (t, 2.0), {}) is False
        assert [x.name for x in w.flush()] == ["fused[aten::mul+aten::relu_]"]
        assert queue.synchronize(timeout=60)
        np.testing.assert_array_equal(t, np.maximum(a * b, 0))
    finally:
        fusion.disable()


def test_a_new_setting_flushes_what_the_old_one_held(queue):
    a, b = arrays(2)
    t = np.zeros(N, np.float32)
    w = fusion.FusionWindow(queue)
    try:
        fusion.enable()
        assert w.offer("aten::mul", (a, b), {"out": t})
        fusion.enable()                       # a new setting, even an equal one
        assert w.offer("aten::relu_", (t,), {})
        assert w.pending == ("aten::relu_",)
        w.flush()
        assert queue.synchronize(timeout=60)
        np.testing.assert_array_equal(t, np.maximum(a * b, 0))
    finally:
        fusion.disable()


def _trigger(kind, window, queue, out):
    """What the facade does at one flush trigger; returns what the host then observes."""
    if kind == "non-fusable op":
        total = np.zeros((), np.float32)
        assert not window.offer("aten::sum", (out,), {"out": total})
    window.flush()                                   # the facade flushes first, always
    if kind == "stream synchronize":
        queue.synchronize(timeout=60)
        return out.copy()
    if kind == "event record":
        event = queue.record_event()
        event.synchronize(timeout=60)
        return out.copy()
    if kind == "event wait on another stream":
        other = streamq.Queue("fusion-test-other")
        other.wait_event(queue.record_event())
        seen = other.submit(out.copy)
        result = seen.result(timeout=60)
        other.shutdown()
        return result
    if kind == "memcpy DtoH":
        host = np.empty_like(out)
        queue.enqueue(np.copyto, (host, out), name="memcpy.DtoH", kind="memcpy")
        queue.synchronize(timeout=60)
        return host
    if kind == "non-fusable op":
        queue.enqueue(kernels.get("aten::sum"), (out,), {"out": total}, name="aten::sum",
                      kind="kernel").result(timeout=60)
        return np.full_like(out, total)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["stream synchronize", "event record",
                                  "event wait on another stream", "memcpy DtoH",
                                  "non-fusable op"])
def test_each_flush_trigger_observes_the_fused_results(kind, auto_fusion, queue):
    a, b, c = arrays(3)
    outs = [np.zeros(N, np.float32) for _ in range(3)]
    w = fusion.FusionWindow(queue)
    for call in mul_add_relu(a, b, c, *outs):
        assert w.offer(*call)
    seen = _trigger(kind, w, queue, outs[2])
    want = expected_of(mul_add_relu, 3, 3)[2]
    if kind == "non-fusable op":
        want = np.full_like(want, want.sum(dtype=np.float32))
        np.testing.assert_allclose(seen, want, rtol=1e-5)
    else:
        assert_same_bits(seen, want)


def test_without_a_flush_an_event_would_not_cover_held_ops(auto_fusion, queue):
    """Why the facade must flush: held ops are not on the queue yet."""
    a, b, c = arrays(3)
    outs = [np.zeros(N, np.float32) for _ in range(3)]
    w = fusion.FusionWindow(queue)
    for call in mul_add_relu(a, b, c, *outs):
        w.offer(*call)
    assert queue.record_event().synchronize(timeout=10)
    assert not outs[2].any()
    w.flush()
    assert queue.synchronize(timeout=60) and outs[2].any()


# -------------------------------------------------------- log and intermediates ---

def test_log_shows_the_fused_op_and_its_real_reads_and_writes(auto_fusion, queue, tmp_path):
    a, b, c = arrays(3)
    bias = np.float32(0.5) * np.ones((8, 1), np.float32)
    x = a.reshape(8, 8)
    t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
    y = np.zeros((8, 8), np.float32)
    w = fusion.FusionWindow(queue)
    trace.enable(tmp_path / "log.jsonl")
    try:
        for call in mul_add_relu(a, b, c, t1, t2, t3):       # out of place: all written
            w.offer(*call)
        w.flush()
        w.offer("aten::mul", (x, 3.0), {"out": y})           # in place: one write
        w.offer("aten::add_", (y, bias), {})
        w.offer("aten::relu_", (y,), {})
        w.flush()
        assert queue.synchronize(timeout=60)
        trace.flush()
    finally:
        trace.disable()
    tasks = [r for r in read_log(tmp_path / "log.jsonl") if r.get("kind") == "kernel"]
    first, second = tasks
    assert first["name"] == "fused[aten::mul+aten::add+aten::relu]"
    addr = lambda arr: arr.__array_interface__["data"][0]
    assert [r["buffer"] for r in first["reads"]] == [addr(a), addr(b), addr(c)]
    assert [r["buffer"] for r in first["writes"]] == [addr(t1), addr(t2), addr(t3)]
    assert second["name"] == "fused[aten::mul+aten::add_+aten::relu_]"
    assert [r["buffer"] for r in second["reads"]] == [addr(x.base if x.base is not None else x),
                                                      addr(bias)]
    assert [(r["buffer"], r["shape"]) for r in second["reads"]][1] == (addr(bias), [8, 1])
    assert [(r["buffer"], r["shape"]) for r in second["writes"]] == [(addr(y), [8, 8])]
    np.testing.assert_array_equal(y, np.maximum(x * 3 + bias, 0))


def test_describe_maps_the_logged_buffers(auto_fusion, queue, tmp_path):
    class Ref:
        def __init__(self, arr):
            self.arr = arr

        def __streamq_buffer__(self):
            return {"buffer": 7, "offset": 0, "dtype": "<f4", "shape": list(self.arr.shape),
                    "strides": list(self.arr.strides), "bytes": self.arr.nbytes}

    a, b = arrays(2)
    t = np.zeros(N, np.float32)
    w = fusion.FusionWindow(queue, describe=Ref)
    trace.enable(tmp_path / "log.jsonl")
    try:
        w.offer("aten::mul", (a, b), {"out": t})
        w.offer("aten::relu_", (t,), {})
        w.flush()
        assert queue.synchronize(timeout=60)
        trace.flush()
    finally:
        trace.disable()
    (task,) = [r for r in read_log(tmp_path / "log.jsonl") if r.get("kind") == "kernel"]
    assert [r["buffer"] for r in task["reads"] + task["writes"]] == [7, 7, 7]


def test_intermediates_are_still_written_for_later_readers(auto_fusion, queue):
    a, b, c = arrays(3)
    t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
    run_window(queue, mul_add_relu(a, b, c, t1, t2, t3))
    want = expected_of(mul_add_relu, 3, 3)
    for got, exp in zip((t1, t2, t3), want):          # the caller may read t1 and t2 now
        assert_same_bits(got, exp)


def test_intermediate_read_again_further_down_the_chain(auto_fusion, queue):
    a, b = arrays(2)
    t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
    calls = [("aten::mul", (a, b), {"out": t1}),
             ("aten::relu", (t1,), {"out": t2}),
             ("aten::sub", (t2, t1), {"out": t3})]       # reads t1 again: max(x,0) - x
    taken, tasks = run_window(queue, calls)
    assert all(taken) and len(tasks) == 1
    np.testing.assert_array_equal(t3, np.maximum(a * b, 0) - a * b)
    np.testing.assert_array_equal(t1, a * b)


def _bounds(arr):
    lo = arr.__array_interface__["data"][0]
    return lo, lo + arr.nbytes


def test_discarded_intermediates_are_not_written_and_the_free_runs_after(auto_fusion, queue):
    a, b, c = arrays(3)
    t1, t2, t3 = (np.full(N, 7.0, np.float32) for _ in range(3))
    w = fusion.FusionWindow(queue)
    done = []
    calls = mul_add_relu(a, b, c, t1, t2, t3)
    assert w.offer(*calls[0]) and w.offer(*calls[1])
    assert w.discard(*_bounds(t1), then=lambda: done.append("free t1"))
    assert w.offer(*calls[2])                        # the chain goes on across the free
    assert w.discard(*_bounds(t2), then=lambda: done.append("free t2"))
    assert done == []                                # deferred until the held ops are enqueued
    tasks = w.flush()
    assert done == ["free t1", "free t2"]
    assert [t.name for t in tasks] == ["fused[aten::mul+aten::add+aten::relu]"]
    assert queue.synchronize(timeout=60)
    np.testing.assert_array_equal(t1, 7.0)           # dead: never stored
    np.testing.assert_array_equal(t2, 7.0)
    assert_same_bits(t3, expected_of(mul_add_relu, 3, 3)[2])


def test_discard_with_nothing_held_leaves_the_free_to_the_caller(auto_fusion, queue):
    (a,) = arrays(1)
    w = fusion.FusionWindow(queue)
    assert not w.discard(*_bounds(a), then=lambda: pytest.fail("must not run"))
    assert w.flush() == []


def test_discarding_a_chain_input_keeps_every_output(auto_fusion, queue):
    a, b, c = arrays(3)
    t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
    w = fusion.FusionWindow(queue)
    assert all(w.offer(*call) for call in mul_add_relu(a, b, c, t1, t2, t3))
    assert w.discard(*_bounds(a))                    # an input, not an output: nothing dies
    w.flush()
    assert queue.synchronize(timeout=60)
    for got, want in zip((t1, t2, t3), expected_of(mul_add_relu, 3, 3)):
        assert_same_bits(got, want)


def test_discard_arguments_are_checked(auto_fusion, queue):
    w = fusion.FusionWindow(queue)
    with pytest.raises(ValueError, match="lo <= hi"):
        w.discard(10, 5)
    with pytest.raises(TypeError, match="then must be callable"):
        w.discard(0, 8, then=3)


# ----------------------------------------------------------------- aliasing ---

def test_input_overlapping_an_earlier_output_through_another_view_splits_the_chain(
        auto_fusion, queue):
    def build():
        a, b = arrays(2, n=N + 1)
        t = np.zeros(N + 1, np.float32)
        u = np.zeros(N, np.float32)
        calls = [("aten::mul", (a[:-1], b[:-1]), {"out": t[:-1]}),
                 ("aten::add", (t[:-1], t[1:]), {"out": u})]   # t[1:] shifts t[:-1] by one
        return (a, b, t, u), calls

    want, calls = build()
    run_unfused(calls)
    got, calls = build()
    taken, tasks = run_window(queue, calls)
    assert taken == [True, True]
    assert [x.name for x in tasks] == ["aten::add"]           # the mul was enqueued first
    for g, e in zip(got, want):
        assert_same_bits(g, e)


def test_output_overlapping_an_input_through_another_view_splits_the_chain(auto_fusion, queue):
    def build():
        buf = arrays(1, n=N + 1)[0]
        b = arrays(1, seed=3)[0]
        t = np.zeros(N, np.float32)
        calls = [("aten::mul", (buf[:-1], b), {"out": t}),
                 ("aten::add", (t, 1.0), {"out": buf[1:]})]   # writes over mul's input, shifted
        return (buf, b, t), calls

    want, calls = build()
    run_unfused(calls)
    got, calls = build()
    _, tasks = run_window(queue, calls)
    assert [x.name for x in tasks] == ["aten::add"]
    for g, e in zip(got, want):
        assert_same_bits(g, e)


def test_an_op_whose_input_partially_overlaps_its_output_is_refused(auto_fusion, queue):
    buf = arrays(1, n=N + 1)[0]
    w = fusion.FusionWindow(queue)
    assert w.offer("aten::add", (buf[:-1], 1.0), {"out": buf[1:]}) is False
    assert w.offer("aten::add", (buf, 1.0), {"out": buf}) is True     # the same view is fine
    w.flush()


# -------------------------------------------------------------------- plans ---

def plan_of(*chains, label=None):
    return {"version": 1, "chains": [
        {"ops": list(c), "kind": "vertical", "queue_label": label, "occurrences": 3,
         "saved_bytes": 1024, "saved_us": 1.5} for c in chains]}


def test_plan_chain_is_enqueued_as_soon_as_it_is_complete(queue):
    fusion.enable(plan_of(["aten::mul", "aten::relu_"]))
    try:
        a, b = arrays(2)
        t = np.zeros(N, np.float32)
        w = fusion.FusionWindow(queue)
        assert w.offer("aten::mul", (a, b), {"out": t})
        assert w.offer("aten::relu_", (t,), {})
        assert w.pending == ()                                 # flushed by itself
        assert w.offer("aten::mul_", (t, 2.0), {}) is False    # not in the plan
        assert queue.synchronize(timeout=60)
        np.testing.assert_array_equal(t, np.maximum(a * b, 0))
    finally:
        fusion.disable()


def test_plan_prefix_left_incomplete_runs_unfused(queue):
    fusion.enable(plan_of(["aten::mul", "aten::add", "aten::relu"]))
    try:
        a, b, c = arrays(3)
        t1, t2 = np.zeros(N, np.float32), np.zeros(N, np.float32)
        w = fusion.FusionWindow(queue)
        assert w.offer("aten::mul", (a, b), {"out": t1})
        assert w.offer("aten::add", (t1, c), {"out": t2})
        assert w.offer("aten::sigmoid", (t2,), {"out": np.empty_like(t2)}) is False
        assert [x.name for x in w.flush()] == ["aten::mul", "aten::add"]
        assert queue.synchronize(timeout=60)
        np.testing.assert_array_equal(t2, a * b + c)
    finally:
        fusion.disable()


def test_plan_prefers_the_longest_chain_and_splits_greedily(queue):
    fusion.enable(plan_of(["aten::mul", "aten::add"], ["aten::mul", "aten::add", "aten::relu"],
                          ["aten::relu_", "aten::mul_"]))
    try:
        a, b, c = arrays(3)
        t1, t2, t3 = (np.zeros(N, np.float32) for _ in range(3))
        w = fusion.FusionWindow(queue)
        for call in mul_add_relu(a, b, c, t1, t2, t3):
            assert w.offer(*call)
        assert w.pending == ()                # [mul, add, relu] is complete, nothing extends it
        # held [mul, add] then a break: [mul, add] is a complete chain of its own
        u1, u2 = np.zeros(N, np.float32), np.zeros(N, np.float32)
        assert w.offer("aten::mul", (a, b), {"out": u1})
        assert w.offer("aten::add", (u1, c), {"out": u2})
        assert [x.name for x in w.flush()] == ["fused[aten::mul+aten::add]"]
        assert queue.synchronize(timeout=60)
        np.testing.assert_array_equal(t3, np.maximum(a * b + c, 0))
        np.testing.assert_array_equal(u2, a * b + c)
    finally:
        fusion.disable()


def test_plan_epilogue_tail_fuses_after_the_convolution(queue):
    fusion.enable({"version": 1, "chains": [
        {"ops": ["cudnn.convolution_forward", "cudnn.add_tensor", "cudnn.activation_forward"],
         "kind": "epilogue", "queue_label": None}]})
    try:
        y = np.linspace(-3, 3, 2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8)   # "conv output"
        bias = np.arange(4, dtype=np.float32).reshape(1, 4, 1) - 1.5
        want = np.maximum(y + bias, 0)
        w = fusion.FusionWindow(queue)
        assert w.offer("cudnn.convolution_forward", (y,), {}) is False       # not elementwise
        assert w.offer("cudnn.add_tensor", (bias, y), {"alpha": 1.0, "beta": 1.0})
        assert w.offer("cudnn.activation_forward", (y, y), {"mode": "relu"})
        assert w.pending == ()                                  # the tail is complete: enqueued
        assert queue.synchronize(timeout=60)
        np.testing.assert_array_equal(y, want)
    finally:
        fusion.disable()


def test_plan_chains_apply_only_to_their_queue_label(queue):
    fusion.enable(plan_of(["aten::mul", "aten::relu_"], label="another-stream"))
    try:
        a, b = arrays(2)
        w = fusion.FusionWindow(queue)
        assert w.offer("aten::mul", (a, b), {"out": np.zeros(N, np.float32)}) is False
    finally:
        fusion.disable()


def test_plan_chains_of_other_kinds_are_not_applied(queue):
    plan = plan_of(["aten::mul", "aten::relu_"])
    plan["chains"][0]["kind"] = "horizontal"
    fusion.enable(plan)
    try:
        a, b = arrays(2)
        w = fusion.FusionWindow(queue)
        assert w.offer("aten::mul", (a, b), {"out": np.zeros(N, np.float32)}) is False
    finally:
        fusion.disable()


# ------------------------------------------------------------ misc contract ---

def test_offer_is_refused_when_fusion_is_off(queue):
    fusion.disable()
    a, b = arrays(2)
    assert fusion.FusionWindow(queue).offer("aten::mul", (a, b), {"out": a.copy()}) is False


def test_offer_is_refused_when_another_provider_is_in_force(auto_fusion, queue):
    a, b = arrays(2)
    w = fusion.FusionWindow(queue)
    with kernels.use_providers(["reference", "numba"]):
        assert w.offer("aten::mul", (a, b), {"out": a.copy()}) is False


def test_window_arguments_are_checked(auto_fusion, queue):
    with pytest.raises(ValueError, match="serial"):
        fusion.FusionWindow(streamq.Queue("pool", concurrent=True))
    with pytest.raises(TypeError, match="queue"):
        fusion.FusionWindow("stream0")
    with pytest.raises(ValueError, match="max_ops"):
        fusion.FusionWindow(queue, max_ops=1)
    with pytest.raises(TypeError, match="describe"):
        fusion.FusionWindow(queue, describe="BufferRef")
    w = fusion.FusionWindow(queue)
    with pytest.raises(TypeError, match="op_name"):
        w.offer(3, ())
    with pytest.raises(TypeError, match="args"):
        w.offer("aten::relu", [np.ones(3)])
    with pytest.raises(TypeError, match="kwargs"):
        w.offer("aten::relu", (np.ones(3),), [])


def test_bad_arguments_are_left_for_the_real_kernel_to_reject(auto_fusion, queue):
    a = np.ones(N, np.float32)
    w = fusion.FusionWindow(queue)
    assert w.offer("aten::add", (a, a), {"out": np.zeros(N + 1, np.float32)}) is False
    assert w.offer("aten::add", (a, a), {"alpha": True, "out": a.copy()}) is False
    assert w.offer("aten::relu", (a,), {}) is False                     # out missing
    with pytest.raises(ValueError, match="out"):
        kernels.get("aten::add")(a, a, out=np.zeros(N + 1, np.float32))


def test_unwritable_cache_dir_falls_back_to_unfused_ops(auto_fusion, queue, tmp_path,
                                                        monkeypatch, caplog):
    from streamq.fusion import window as window_module
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("STREAMQ_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(window_module, "_warned_fallback", False)
    a, b = arrays(2, dtype=np.float64)
    t = np.zeros(N, np.float64)
    # Five ops: longer than any chain another test builds, so no kernel for it is loaded yet.
    calls = [("aten::div", (a, b), {"out": t}), ("aten::threshold_", (t, 0.25, -4.0), {}),
             ("aten::mul_", (t, 2.0), {}), ("aten::add_", (t, a), {}), ("aten::relu_", (t,), {})]
    with caplog.at_level(logging.WARNING, logger="streamq"):
        taken, tasks = run_window(queue, calls)
    assert all(taken) and len(tasks) == 1 and tasks[0].name.startswith("fused[aten::div+")
    assert "cannot write fused kernels" in caplog.text
    q = a / b
    np.testing.assert_array_equal(t, np.maximum(np.where(q <= 0.25, -4.0, q) * 2.0 + a, 0))


def test_ops_still_held_at_interpreter_exit_run(tmp_path, python_subprocess):
    out = tmp_path / "y.npy"
    code = f"""
import atexit, numpy as np, streamq
from streamq import fusion
fusion.enable()
q = streamq.Queue("exit-stream")
w = fusion.FusionWindow(q)
x = np.arange(-4, 4, dtype=np.float32)
y = np.zeros_like(x)
w.offer("aten::mul", (x, 2.0), {{"out": y}})
w.offer("aten::relu_", (y,), {{}})
atexit.register(lambda: np.save({str(out)!r}, y))   # runs after streamq's exit hook
"""
    proc = python_subprocess(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out), [0, 0, 0, 0, 0, 2, 4, 6])
