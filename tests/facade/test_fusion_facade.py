"""Run-time fusion through the facade: cudaLaunchKernel offers elementwise ops to the stream's window."""

from __future__ import annotations

import json

import numpy as np
import pytest

import streamq
import streamq.cuda_facade as cf
import streamq.fusion
from streamq.cuda_facade import runtime as rt

OK = rt.cudaError_t.cudaSuccess


def ok(result):
    assert result[0] == OK, result
    return result[1] if len(result) == 2 else result[1:]


@pytest.fixture
def fusion_on():
    streamq.fusion.enable()          # automatic mode
    try:
        yield
    finally:
        streamq.fusion.disable()


def _launch(stream, op, *args, **kwargs):
    ok(rt.cudaLaunchKernel(op, (1, 1, 1), (1, 1, 1), args + (kwargs,), 0, stream))


def _chain(stream, x, w, b, out):
    """out = relu(x * w + b) * 0.5 in four launches, in place on ``out`` after the first."""
    _launch(stream, "aten::mul", x, w, out=out)
    _launch(stream, "aten::add_", out, b)
    _launch(stream, "aten::relu_", out)
    _launch(stream, "aten::mul", out, 0.5, out=out)


def _expected(x, w, b):
    # float32 rounding after every op, as the unfused kernels do
    t = (x * w).astype(np.float32)
    t = (t + b).astype(np.float32)
    t = np.maximum(t, np.float32(0))
    return (t * np.float32(0.5)).astype(np.float32)


def test_fused_chain_gives_the_unfused_result_and_logs_one_fused_task(fusion_on, tmp_path):
    rng = np.random.default_rng(0)
    n = 1 << 16
    x, w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(3))
    out = cf.device_array((n,), np.float32)
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    log = tmp_path / "log.jsonl"
    streamq.trace.enable(str(log))
    try:
        _chain(stream, x, w, b, out)
        ok(rt.cudaStreamSynchronize(stream))
    finally:
        streamq.trace.disable()
    np.testing.assert_array_equal(cf.to_host(out), _expected(np.asarray(x), np.asarray(w), np.asarray(b)))
    names = [r.get("name") for r in map(json.loads, log.read_text().splitlines()) if r.get("type") == "task"]
    fused = [n for n in names if n and n.startswith("fused[")]
    assert fused, names
    assert not any(n in ("aten::relu_", "aten::add_") for n in names), names
    ok(rt.cudaStreamDestroy(stream))


def test_event_record_flushes_the_window_so_another_stream_sees_the_result(fusion_on):
    rng = np.random.default_rng(1)
    n = 4096
    x, w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(3))
    out = cf.device_array((n,), np.float32)
    copy = cf.device_array((n,), np.float32)
    s1 = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    s2 = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ev = ok(rt.cudaEventCreate())
    _chain(s1, x, w, b, out)
    ok(rt.cudaEventRecord(ev, s1))            # must cover the held launches
    ok(rt.cudaStreamWaitEvent(s2, ev, 0))
    _launch(s2, "aten::copy_", copy, out)
    ok(rt.cudaStreamSynchronize(s2))
    np.testing.assert_array_equal(cf.to_host(copy), _expected(np.asarray(x), np.asarray(w), np.asarray(b)))
    for s in (s1, s2):
        ok(rt.cudaStreamDestroy(s))


def test_a_memcpy_on_the_stream_sees_every_held_launch(fusion_on):
    rng = np.random.default_rng(2)
    n = 4096
    x, w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(3))
    out = cf.device_array((n,), np.float32)
    stream = ok(rt.cudaStreamCreate())
    _chain(stream, x, w, b, out)
    host = np.empty(n, np.float32)
    ok(rt.cudaMemcpyAsync(host, out.ctypes.data, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
    ok(rt.cudaStreamSynchronize(stream))
    np.testing.assert_array_equal(host, _expected(np.asarray(x), np.asarray(w), np.asarray(b)))
    ok(rt.cudaStreamDestroy(stream))


def test_the_legacy_stream_waits_for_launches_held_on_a_blocking_stream(fusion_on):
    rng = np.random.default_rng(3)
    n = 4096
    x, w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(3))
    out = cf.device_array((n,), np.float32)
    stream = ok(rt.cudaStreamCreate())        # blocking: the legacy stream must wait for it
    _chain(stream, x, w, b, out)
    host = np.empty(n, np.float32)
    ok(rt.cudaMemcpy(host, out.ctypes.data, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
    np.testing.assert_array_equal(host, _expected(np.asarray(x), np.asarray(w), np.asarray(b)))
    ok(rt.cudaStreamDestroy(stream))


def _temp(n, stream):
    """A float32 temporary from the stream's pool, as PyTorch's caching allocator hands out."""
    from streamq.cuda_facade._memory import typed_view
    ptr = ok(rt.cudaMallocAsync(4 * n, stream))
    return ptr, typed_view(ptr, np.float32, (n,))


def _freeing_chain(stream, x, w, b, out):
    """out = relu(x * w + b) * 0.5 out of place, each temporary freed right after its last use."""
    n = x.shape[0]
    p1, t1 = _temp(n, stream)
    p2, t2 = _temp(n, stream)
    p3, t3 = _temp(n, stream)
    _launch(stream, "aten::mul", x, w, out=t1)
    _launch(stream, "aten::add", t1, b, out=t2)
    ok(rt.cudaFreeAsync(p1, stream))
    _launch(stream, "aten::relu", t2, out=t3)
    ok(rt.cudaFreeAsync(p2, stream))
    _launch(stream, "aten::mul", t3, 0.5, out=out)
    ok(rt.cudaFreeAsync(p3, stream))
    return (t1, t2, t3)


def _task_records(log):
    return [r for r in map(json.loads, log.read_text().splitlines()) if r.get("type") == "task"]


def test_temporaries_freed_in_stream_order_are_never_written(fusion_on, tmp_path):
    rng = np.random.default_rng(5)
    n = 1 << 15
    x, w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(3))
    out = cf.device_array((n,), np.float32)
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    log = tmp_path / "log.jsonl"
    streamq.trace.enable(str(log))
    try:
        temps = _freeing_chain(stream, x, w, b, out)
        sentinels = [t.copy() for t in temps]     # the pool's blocks as they were before the chain
        ok(rt.cudaStreamSynchronize(stream))
    finally:
        streamq.trace.disable()
    np.testing.assert_array_equal(cf.to_host(out), _expected(np.asarray(x), np.asarray(w), np.asarray(b)))
    tasks = _task_records(log)
    fused = [t for t in tasks if t["name"].startswith("fused[")]
    assert [t["name"] for t in fused] == ["fused[aten::mul+aten::add+aten::relu+aten::mul]"], tasks
    # one fused kernel writing only `out`: the freed temporaries' bytes were never stored
    assert len(fused[0]["writes"]) == 1, fused[0]["writes"]
    for before, t in zip(sentinels, temps):
        np.testing.assert_array_equal(np.asarray(t), before)
    # the frees ran after the kernel, in stream order
    names = [t["name"] for t in tasks]
    assert names.index(fused[0]["name"]) < names.index("cudaFreeAsync")
    assert names.count("cudaFreeAsync") == 3
    ok(rt.cudaStreamDestroy(stream))


def test_freeing_a_chain_input_defers_the_free_and_keeps_the_input_readable(fusion_on):
    rng = np.random.default_rng(6)
    n = 4096
    w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(2))
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    px, x = _temp(n, stream)
    host_x = rng.standard_normal(n).astype(np.float32)
    ok(rt.cudaMemcpyAsync(px, host_x, 4 * n, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
    out = cf.device_array((n,), np.float32)
    _launch(stream, "aten::mul", x, w, out=out)
    ok(rt.cudaFreeAsync(px, stream))            # x is read by the held kernel: freed after it
    _launch(stream, "aten::add_", out, b)
    # another stream's allocation must not get x's block while the held kernel still reads it
    other = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    q, clobber = _temp(n, other)
    clobber[...] = np.nan
    ok(rt.cudaStreamSynchronize(stream))
    expected = ((host_x * np.asarray(w)).astype(np.float32) + np.asarray(b)).astype(np.float32)
    np.testing.assert_array_equal(cf.to_host(out), expected)
    ok(rt.cudaFreeAsync(q, other))
    for s in (stream, other):
        ok(rt.cudaStreamDestroy(s))


def test_a_freed_pointer_is_refused_at_once_even_while_its_free_is_deferred(fusion_on):
    n = 1024
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    x = cf.to_device(np.ones(n, np.float32))
    p1, t1 = _temp(n, stream)
    _launch(stream, "aten::mul", x, 2.0, out=t1)
    ok(rt.cudaFreeAsync(p1, stream))
    err = rt.cudaFreeAsync(p1, stream)[0]
    assert err == rt.cudaError_t.cudaErrorInvalidValue
    ok(rt.cudaStreamSynchronize(stream))
    ok(rt.cudaStreamDestroy(stream))


def test_without_fusion_the_freeing_chain_gives_the_same_bytes():
    rng = np.random.default_rng(7)
    n = 1 << 14
    x, w, b = (cf.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(3))
    out = cf.device_array((n,), np.float32)
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    _freeing_chain(stream, x, w, b, out)
    ok(rt.cudaStreamSynchronize(stream))
    np.testing.assert_array_equal(cf.to_host(out), _expected(np.asarray(x), np.asarray(w), np.asarray(b)))
    ok(rt.cudaStreamDestroy(stream))
