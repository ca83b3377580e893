"""Fusion candidates, near-misses with each refusal reason, the cost model and the plan, on hand-built logs."""

import json

import pytest
from logbuilder import LogBuilder, view

from streamq.analysis import analyze, plan, write_plan
from streamq.analysis.cost import CostModel
from streamq.analysis.fusion import HORIZONTAL_MIN_OPS, REASONS

pytestmark = pytest.mark.timeout(60)

N = 1024          # float32 elements
NB = 4 * N        # bytes of one tensor
X, Y, T1, T2, OUT, W, BIAS = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000


def v(buf, shape=(N,), **kw):
    return view(buf, shape, **kw)


def run(tmp_path, b, **kw):
    return analyze(b.write(tmp_path / "log.jsonl"), **kw)


def chain_ops(b, q):
    """t1 = x*y; t2 = t1+y; out = relu(t2): two intermediates of NB bytes each."""
    _, l1 = b.op(q, "aten::mul", reads=[v(X), v(Y)], writes=[v(T1)])
    _, l2 = b.op(q, "aten::add", reads=[v(T1), v(Y)], writes=[v(T2)])
    _, l3 = b.op(q, "aten::relu", reads=[v(T2)], writes=[v(OUT)])
    return [l1, l2, l3]


def near(analysis, reason):
    return [n for n in analysis.near_misses if n["reasons"] == [reason]]


def test_vertical_chain_grouped_over_iterations(tmp_path):
    b = LogBuilder()
    q = b.queue("stream0")
    lines = [chain_ops(b, q) for _ in range(3)]
    a = run(tmp_path, b)
    assert len(a.findings) == 1
    f = a.findings[0]
    assert f.kind == "vertical" and f.queue == "stream0"
    assert f.ops == ("aten::mul", "aten::add", "aten::relu")
    assert f.occurrences == 3
    assert f.saved_bytes == 3 * (2 * NB + 2 * NB)   # t1 and t2 each written once and read once
    assert f.launches == 3 * 2
    assert f.examples == lines
    assert f.measured_us == pytest.approx(9 * 10.0)
    assert a.near_misses == [] and a.races == []


def test_epilogue_after_convolution_with_in_place_tail(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    shape = (2, 8, 4, 4)
    y = view(OUT, shape)
    b.op(q, "cudnn.convolution_forward", reads=[view(X, (2, 3, 6, 6)), view(W, (8, 3, 3, 3))], writes=[y])
    b.op(q, "cudnn.add_tensor", reads=[view(BIAS, (1, 8, 1, 1)), y], writes=[y])
    b.op(q, "cudnn.activation_forward", reads=[y], writes=[y])
    a = run(tmp_path, b)
    (f,) = a.findings
    assert f.kind == "epilogue"
    assert f.ops == ("cudnn.convolution_forward", "cudnn.add_tensor", "cudnn.activation_forward")
    assert f.saved_bytes == 2 * (2 * y["bytes"]) and f.launches == 2


def test_stream_ordered_free_between_producer_and_consumer_does_not_break_the_chain(tmp_path):
    # PyTorch eager through the facade: each temporary is freed (cudaFreeAsync, a "free" task on
    # the stream) once its last reader is launched; the block returns to the pool when it runs.
    b = LogBuilder()
    q = b.queue("s")
    b.op(q, "aten::mul", reads=[v(X), v(Y)], writes=[v(T1)])
    b.op(q, "aten::add", reads=[v(T1), v(Y)], writes=[v(T2)])
    b.op(q, "cudaFreeAsync", kind="free")
    b.free(T1)
    b.op(q, "aten::relu", reads=[v(T2)], writes=[v(OUT)])
    b.op(q, "cudaFreeAsync", kind="free")
    b.free(T2)
    a = run(tmp_path, b)
    assert [f.ops for f in a.findings] == [("aten::mul", "aten::add", "aten::relu")]
    assert a.findings[0].saved_bytes == 2 * (2 * NB)
    assert a.near_misses == []


def test_a_host_function_between_producer_and_consumer_still_breaks_the_chain(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    b.op(q, "aten::mul", reads=[v(X), v(Y)], writes=[v(T1)])
    b.op(q, "my_callback", kind="host")           # may read anything: not transparent
    b.op(q, "aten::relu", reads=[v(T1)], writes=[v(OUT)])
    a = run(tmp_path, b)
    assert a.findings == []
    assert [n["reasons"] for n in a.near_misses] == [["interleaved"]]


def test_chain_legal_when_intermediate_is_freed_or_overwritten_before_any_other_read(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    chain_ops(b, q)
    b.free(T1)
    b.op(q, "aten::fill_", writes=[v(T2)])          # t2 overwritten, so dead
    b.op(q, "aten::sum", reads=[v(T1)], writes=[v(W, (1,))])  # a new allocation at T1's address
    a = run(tmp_path, b)
    assert [f.ops for f in a.findings] == [("aten::mul", "aten::add", "aten::relu")]


def test_another_reader_refuses_the_link_and_splits_the_chain(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    l1, l2, l3 = chain_ops(b, q)
    _, l4 = b.op(q, "aten::sum", reads=[v(T1)], writes=[v(W, (1,))])   # t1 read again later
    a = run(tmp_path, b)
    assert [f.ops for f in a.findings] == [("aten::add", "aten::relu")]
    assert a.findings[0].saved_bytes == 2 * NB
    (n,) = near(a, "another_reader")
    assert n["producer"] == {"op": "aten::mul", "queue": "s"}
    assert n["consumer"] == {"op": "aten::add", "queue": "s"}
    assert n["examples"][0]["lines"] == [l1, l2]
    assert f"line {l4}" in n["examples"][0]["detail"]


def test_reader_on_another_queue_before_the_consumer_also_refuses(tmp_path):
    b = LogBuilder()
    q, p = b.queue("s"), b.queue("p")
    mul, _ = b.op(q, "aten::mul", reads=[v(X)], writes=[v(T1)])
    _, other = b.op(p, "aten::sigmoid", reads=[v(T1)], writes=[v(W)], deps=[mul])
    b.op(q, "aten::relu", reads=[v(T1)], writes=[v(OUT)])
    a = run(tmp_path, b)
    assert a.findings == [] and a.races == []
    got = {n["reasons"][0]: n for n in a.near_misses}
    assert set(got) == {"another_reader", "cross_stream"}
    assert f"line {other}" in got["another_reader"]["examples"][0]["detail"]


def test_host_read_of_the_intermediate_refuses(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    chain_ops(b, q)
    b.host_sync(queue=q)
    b.host_access("host_read", T2, NB)
    a = run(tmp_path, b)
    assert [f.ops for f in a.findings] == [("aten::mul", "aten::add")]
    (n,) = near(a, "host_read")
    assert (n["producer"]["op"], n["consumer"]["op"]) == ("aten::add", "aten::relu")


@pytest.mark.parametrize("between", ["event", "host_sync", "device_sync"])
def test_synchronization_between_producer_and_consumer_refuses(tmp_path, between):
    b = LogBuilder()
    q = b.queue("s")
    b.op(q, "aten::mul", reads=[v(X)], writes=[v(T1)])
    if between == "event":
        b.record_event(q, "ev")
    elif between == "host_sync":
        b.host_sync("cudaStreamSynchronize", queue=q)
    else:
        b.host_sync("cudaDeviceSynchronize")
    b.op(q, "aten::relu", reads=[v(T1)], writes=[v(OUT)])
    a = run(tmp_path, b)
    assert a.findings == []
    assert [n["reasons"] for n in a.near_misses] == [["sync_between"]]


def test_cross_stream_and_interleaved_and_concurrent_queue(tmp_path):
    b = LogBuilder()
    q, p, c = b.queue("s"), b.queue("p"), b.queue("pool", concurrent=True)
    m, _ = b.op(q, "aten::mul", reads=[v(X)], writes=[v(T1)])
    e, _ = b.record_event(q, "e")
    b.wait_event(p, "e", e)
    b.op(p, "aten::relu", reads=[v(T1)], writes=[v(OUT)])                 # cross-stream
    b.op(q, "aten::mul", reads=[v(Y)], writes=[v(T2)])
    b.op(q, "aten::fill_", writes=[v(W)])                                 # unrelated op between
    b.op(q, "aten::relu", reads=[v(T2)], writes=[v(BIAS)])                # interleaved
    b.op(c, "aten::mul", reads=[v(0x9000)], writes=[v(0xA000)])
    b.op(c, "aten::relu", reads=[v(0xA000)], writes=[v(0xB000)])          # concurrent queue
    a = run(tmp_path, b)
    reasons = {n["reasons"][0]: n for n in a.near_misses}
    assert set(reasons) == {"cross_stream", "interleaved", "concurrent_queue"}
    assert reasons["cross_stream"]["consumer"]["queue"] == "p"
    assert "aten::fill_" in reasons["interleaved"]["examples"][0]["detail"]
    assert a.findings == []


def test_shape_mismatch_aliasing_and_opaque_op(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    mat = (32, 32)
    b.op(q, "aten::mul", reads=[view(X, mat)], writes=[view(T1, mat)])
    b.op(q, "aten::relu", reads=[view(T1, mat, strides=[4, 128])], writes=[view(OUT, mat)])  # transposed
    b.op(q, "aten::mul", reads=[view(Y, (N,))], writes=[view(T2, (N,))])
    b.op(q, "aten::add", reads=[view(T2, (N,))], writes=[view(Y, (N,), offset=4)])  # y shifted by one
    b.op(q, "cudnn.dropout_forward", reads=[v(W)], writes=[v(BIAS)])
    b.op(q, "aten::relu", reads=[v(BIAS)], writes=[v(0x8000)])
    a = run(tmp_path, b)
    got = {n["reasons"][0]: n for n in a.near_misses}
    assert set(got) == {"shape_mismatch", "aliasing", "opaque_op"}
    assert got["shape_mismatch"]["consumer"]["op"] == "aten::relu"
    assert got["aliasing"]["consumer"]["op"] == "aten::add"
    assert got["opaque_op"]["producer"]["op"] == "cudnn.dropout_forward"
    assert "opaque" in got["opaque_op"]["examples"][0]["detail"]
    assert a.findings == []
    assert set(REASONS) >= set(got)


def test_reduction_consumer_is_a_single_reason_near_miss(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    b.op(q, "aten::relu", reads=[v(X)], writes=[v(T1)])
    b.op(q, "aten::sum", reads=[v(T1)], writes=[v(OUT, (1,))])
    a = run(tmp_path, b)
    assert [n["reasons"] for n in a.near_misses] == [["opaque_op"]]


def test_failed_producer_is_not_fused(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    b.op(q, "aten::mul", reads=[v(X)], writes=[v(T1)], status="error")
    b.op(q, "aten::relu", reads=[v(T1)], writes=[v(OUT)])
    assert run(tmp_path, b).findings == []


def test_siblings_share_an_input(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    big = (1 << 20,)                 # not small: a sibling, not a horizontal fusion
    b.op(q, "aten::relu", reads=[view(X, big)], writes=[view(T1, big)])
    b.op(q, "aten::sigmoid", reads=[view(X, big)], writes=[view(T2, big)])
    b.op(q, "aten::tanh", reads=[view(X, big)], writes=[view(OUT, big)])
    a = run(tmp_path, b)
    (f,) = a.findings
    assert f.kind == "sibling" and f.ops == ("aten::relu", "aten::sigmoid", "aten::tanh")
    assert f.saved_bytes == 2 * 4 * (1 << 20) and f.launches == 2


def test_horizontal_fusion_of_small_independent_updates(tmp_path):
    b = LogBuilder()
    q = b.queue("opt")
    n_params = 6
    for it in range(2):
        for i in range(n_params):
            p, g = 0x10000 * (i + 1), 0x10000 * (i + 1) + 0x8000
            b.op(q, "aten::add_", reads=[view(p, (64,)), view(g, (64,))], writes=[view(p, (64,))])
        b.record_event(q, f"step{it}")
    a = run(tmp_path, b)
    (f,) = a.findings
    assert n_params >= HORIZONTAL_MIN_OPS
    assert f.kind == "horizontal" and f.ops == ("aten::add_",) * n_params
    assert f.occurrences == 2 and f.launches == 2 * (n_params - 1) and f.saved_bytes == 0


def test_cost_model_fits_overhead_and_bandwidth():
    cm = CostModel()
    for nbytes in (1000, 2000, 4000, 8000):
        cm.observe(nbytes, 2.0 + nbytes / 500.0)     # 2 µs overhead, 500 bytes/µs
    for gap in (1.0, 3.0, 2.0):
        cm.observe_gap(gap)
    fit = cm.fit()
    assert fit.method == "least-squares"
    assert fit.overhead_us == pytest.approx(2.0) and fit.bandwidth == pytest.approx(500.0)
    assert fit.dispatch_gap_us == 2.0
    assert fit.saved_us(1000, 2) == pytest.approx(2 * (2.0 + 2.0) + 1000 / 500.0)
    same = CostModel()
    for _ in range(3):
        same.observe(1 << 20, 40.0)
    assert same.fit().method == "mean-rate" and same.fit().bandwidth == pytest.approx((1 << 20) / 40.0)
    tiny = CostModel()                                  # small ops of one size: overhead-bound
    for d in (4.0, 5.0, 6.0):
        tiny.observe(100, d)
    fit = tiny.fit()
    assert fit.method == "overhead-only" and fit.bandwidth is None and fit.overhead_us == 5.0
    assert CostModel().fit().bandwidth is None


def test_noisy_ops_of_nearby_sizes_do_not_invent_a_huge_overhead():
    # Two size classes 1.5x apart whose times scatter by +-20%: a straight line through them
    # can have any intercept; the model must fall back to the mean rate, not report ms of overhead.
    cm = CostModel()
    for i, (nbytes, noise) in enumerate([(200e6, 1.2), (134e6, 0.8), (200e6, 0.8), (134e6, 1.2)] * 3):
        cm.observe(nbytes, nbytes / 15e3 * noise)       # 15 GB/s = 15e3 bytes/µs
    fit = cm.fit()
    assert fit.method == "mean-rate" and fit.overhead_us == 0.0
    assert fit.bandwidth == pytest.approx(15e3, rel=0.1)


def test_estimates_use_the_model_fitted_from_the_log(tmp_path):
    b = LogBuilder()
    q = b.queue("s")
    for _ in range(2):
        b.op(q, "aten::mul", reads=[v(X), v(Y)], writes=[v(T1)], dur=1.0 + 3 * NB / 1000.0)
        b.op(q, "aten::relu", reads=[v(T1)], writes=[v(OUT)], dur=1.0 + 2 * NB / 1000.0)
    a = run(tmp_path, b)
    assert a.fit.overhead_us == pytest.approx(1.0) and a.fit.bandwidth == pytest.approx(1000.0)
    (f,) = a.findings
    assert f.estimated_us == pytest.approx(2 * (1.0 + 2 * NB / 1000.0))


def test_min_savings_and_the_plan_file(tmp_path):
    b = LogBuilder()
    q = b.queue("stream0")
    for _ in range(2):
        chain_ops(b, q)
    for i in range(5):
        b.op(q, "aten::add_", reads=[view(0x100000 * (i + 1), (8,))], writes=[view(0x100000 * (i + 1), (8,))])
    path = b.write(tmp_path / "log.jsonl")
    a = analyze(path)
    assert {f.kind for f in a.findings} == {"vertical", "horizontal"}
    p = plan(a)
    assert p == {"version": 1, "chains": [{
        "ops": ["aten::mul", "aten::add", "aten::relu"], "kind": "vertical", "queue_label": "stream0",
        "occurrences": 2, "saved_bytes": 2 * 4 * NB, "saved_us": round(a.findings[0].estimated_us, 3)}]}
    out = tmp_path / "plan.json"
    assert write_plan(a, out) == p and json.loads(out.read_text()) == p
    filtered = analyze(path, min_savings=2 * 4 * NB + 1)
    assert filtered.findings == [] and plan(filtered)["chains"] == []
    with pytest.raises(ValueError, match="min_savings"):
        analyze(path, min_savings=-1)


def test_very_long_chains_and_runs_are_split(tmp_path):
    from streamq.analysis.fusion import MAX_GROUP_OPS
    b = LogBuilder()
    q = b.queue("s")
    n = MAX_GROUP_OPS + 10
    for i in range(n):                  # one in-place chain of n ops on the same view
        b.op(q, "aten::relu_", reads=[v(X)], writes=[v(X)], dur=1.0)
    b.record_event(q, "cut")
    for i in range(n):                  # n independent small updates
        b.op(q, "aten::add_", reads=[view(0x100000 + 64 * i, (8,))], writes=[view(0x100000 + 64 * i, (8,))],
             dur=1.0)
    a = run(tmp_path, b)
    sizes = sorted((f.kind, len(f.ops)) for f in a.findings)
    assert sizes == [("horizontal", 10), ("horizontal", MAX_GROUP_OPS),
                     ("vertical", 10), ("vertical", MAX_GROUP_OPS)]


def test_the_run_time_fusion_loads_the_plan(tmp_path):
    plan_module = pytest.importorskip("streamq.fusion.plan")
    b = LogBuilder()
    q = b.queue("stream0")
    chain_ops(b, q)
    out = tmp_path / "plan.json"
    write_plan(analyze(b.write(tmp_path / "log.jsonl")), out)
    loaded = plan_module.load_plan(str(out))
    (chain,) = loaded.chains
    assert chain.ops == ("aten::mul", "aten::add", "aten::relu") and chain.queue_label == "stream0"
    assert chain.kind == "vertical" and chain.saved_bytes == 4 * NB
