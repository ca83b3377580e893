"""CUDA facade copies and sets: cudaMemcpy(Async), 2D and peer copies, cudaMemset(Async/2D).

Every expected value is computed with numpy in the test. Synchronization rules come
from CUDA's "API synchronization behavior" page (quoted at each test) and the
"Stream synchronization behavior" page for the legacy default stream.
"""

import json
import threading
import time

import numpy as np
import pytest

import streamq
from streamq import trace
from streamq.cuda_facade import _memory, _rt_copy
from streamq.cuda_facade import _rt_memory as rt
from streamq.cuda_facade._context import Stream, device
from streamq.cuda_facade._errors import cudaError_t, last_error_detail

pytestmark = pytest.mark.timeout(60)

OK = cudaError_t.cudaSuccess
INVALID = cudaError_t.cudaErrorInvalidValue
K = rt.cudaMemcpyKind
H2H, H2D, D2H, D2D, DEFAULT = (K.cudaMemcpyHostToHost, K.cudaMemcpyHostToDevice, K.cudaMemcpyDeviceToHost,
                               K.cudaMemcpyDeviceToDevice, K.cudaMemcpyDefault)


def ok(result):
    assert result[0] == OK, (result, last_error_detail())
    return result[1] if len(result) == 2 else result[1:]


def pattern(n, seed=0):
    return ((np.arange(n, dtype=np.int64) * 131 + seed * 17) % 251).astype(np.uint8)


def device_bytes(ptr, n):
    """The bytes at ``ptr`` read directly (after all work is done), not through cudaMemcpy."""
    return np.array(_memory.typed_view(ptr, np.uint8, (n,)))


def gate(stream):
    """Block ``stream`` until the returned semaphore is signalled (10 s at most)."""
    sem = streamq.Semaphore(0)
    stream.launch(sem.wait, (10,), name="gate")
    return sem


@pytest.fixture
def dmem():
    ptrs = []

    def alloc(n, fill=None):
        ptr = ok(rt.cudaMalloc(n))
        ptrs.append(ptr)
        if fill is not None:
            _memory.typed_view(ptr, np.uint8, (n,))[:] = fill
        return ptr

    yield alloc
    device(0).synchronize()
    for p in ptrs:
        rt.cudaFree(p)


# -- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 255, 4096, 1 << 20])
def test_memcpy_round_trip_every_kind(dmem, n):
    src = pattern(n)
    a, b = dmem(n), dmem(n)
    ok(rt.cudaMemcpy(a, src, n, H2D))
    ok(rt.cudaMemcpy(b, a, n, D2D))
    out = np.zeros(n, np.uint8)
    ok(rt.cudaMemcpy(out, b, n, D2H))
    assert np.array_equal(out, src)
    host2 = np.zeros(n, np.uint8)
    ok(rt.cudaMemcpy(host2, out, n, H2H))
    assert np.array_equal(host2, src)


def test_memcpy_of_typed_arrays_copies_raw_bytes(dmem):
    src = np.linspace(-1, 1, 333, dtype=np.float64)
    ptr = dmem(src.nbytes)
    ok(rt.cudaMemcpy(ptr, src, src.nbytes, H2D))
    assert np.array_equal(_memory.typed_view(ptr, np.float64, (333,)), src)
    fortran = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    ok(rt.cudaMemcpy(ptr, fortran, fortran.nbytes, H2D))    # contiguous in memory order
    assert np.array_equal(_memory.typed_view(ptr, np.int32, (12,)), fortran.ravel(order="F"))
    out = np.zeros(5, np.float32)
    ok(rt.cudaMemcpy(out, ptr, 8, D2H))                      # partial: the first 8 bytes
    assert np.array_equal(out.view(np.uint8)[:8], fortran.ravel(order="F").view(np.uint8)[:8])
    assert not out[2:].any()


def test_memcpy_default_infers_the_direction_from_the_pointers(dmem):
    # cudaMemcpyDefault: "the type of transfer is inferred from the pointer values" (UVA).
    n = 1000
    d = dmem(n)
    pinned = ok(rt.cudaMallocHost(n))
    managed = ok(rt.cudaMallocManaged(n, rt.cudaMemAttachGlobal))
    src = pattern(n, 3)
    ok(rt.cudaMemcpy(pinned, src, n, DEFAULT))
    ok(rt.cudaMemcpy(d, pinned, n, DEFAULT))
    ok(rt.cudaMemcpy(managed, d, n, DEFAULT))
    out = np.zeros(n, np.uint8)
    ok(rt.cudaMemcpy(out, managed, n, DEFAULT))
    assert np.array_equal(out, src)
    # Managed memory is both host and device memory for explicit kinds.
    ok(rt.cudaMemcpy(out, managed, n, D2H))
    ok(rt.cudaMemcpy(managed, out, n, H2D))
    ok(rt.cudaMemcpy(out, managed, n, H2H))
    ok(rt.cudaFreeHost(pinned))
    ok(rt.cudaFree(managed))


def test_host_objects_of_every_kind_are_pointers(dmem):
    d = dmem(16)
    ok(rt.cudaMemcpy(d, b"0123456789abcdef", 16, H2D))
    ba = bytearray(16)
    ok(rt.cudaMemcpy(ba, d, 16, D2H))
    assert bytes(ba) == b"0123456789abcdef"
    mv = memoryview(bytearray(16))
    ok(rt.cudaMemcpy(mv, d, 16, D2H))
    assert mv.tobytes() == b"0123456789abcdef"
    arr = np.zeros(16, np.uint8)
    ok(rt.cudaMemcpy(arr.ctypes.data, d, 16, D2H))            # a raw address of live memory
    assert arr.tobytes() == b"0123456789abcdef"

    class DeviceArray:                                        # __cuda_array_interface__: device memory
        __cuda_array_interface__ = {"data": (d, False), "shape": (16,), "typestr": "|u1", "version": 3}

    out = np.zeros(16, np.uint8)
    ok(rt.cudaMemcpy(out, DeviceArray(), 16, D2H))
    assert out.tobytes() == b"0123456789abcdef"
    scalar = np.zeros((), np.int64)                           # a 0-d array is memory, not an address
    ok(rt.cudaMemcpy(scalar, d, 8, D2H))
    assert scalar.tobytes() == b"01234567"
    ok(rt.cudaMemcpy(d, np.uint64(d + 8).reshape(()), 8, H2D))   # its 8 bytes, not the address it holds
    assert device_bytes(d, 8).view(np.uint64)[0] == d + 8


def test_zero_byte_copies_succeed_without_touching_anything():
    assert rt.cudaMemcpy(None, None, 0, H2D) == (OK,)
    assert rt.cudaMemcpyAsync(123, 456, 0, D2D, 0) == (OK,)
    assert rt.cudaMemcpy(None, None, 0, 17) == (cudaError_t.cudaErrorInvalidMemcpyDirection,)


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [5, -1, 99, "HostToDevice", 1.0, None])
def test_invalid_kind_is_invalid_memcpy_direction(dmem, kind):
    # cudaErrorInvalidMemcpyDirection: "the direction of the memcpy passed to the API call is
    # not one of the types specified by cudaMemcpyKind".
    d = dmem(8)
    assert rt.cudaMemcpy(d, np.zeros(8, np.uint8), 8, kind) == (cudaError_t.cudaErrorInvalidMemcpyDirection,)
    assert rt.cudaMemcpyAsync(d, np.zeros(8, np.uint8), 8, kind, 0) == \
        (cudaError_t.cudaErrorInvalidMemcpyDirection,)


def test_pointers_that_contradict_the_kind_are_refused_before_copying(dmem):
    # cudaMemcpy: "Calling cudaMemcpy() with dst and src pointers that do not match the direction
    # of the copy results in an undefined behavior"; the facade refuses them with
    # cudaErrorInvalidMemcpyDirection and copies nothing.
    direction = (cudaError_t.cudaErrorInvalidMemcpyDirection,)
    d1, d2 = dmem(64, fill=1), dmem(64, fill=2)
    host = np.full(64, 7, np.uint8)
    for dst, src, kind in [(d1, host, D2H), (host, d1, H2D), (d1, d2, H2D), (d1, d2, D2H), (host, host, D2D),
                           (d1, host, H2H), (host, d1, D2D)]:
        assert rt.cudaMemcpy(dst, src, 64, kind) == direction, (dst, src, kind)
        assert rt.cudaMemcpyAsync(dst, src, 64, kind, 0) == direction, (dst, src, kind)
    device(0).synchronize()
    assert np.all(device_bytes(d1, 64) == 1) and np.all(device_bytes(d2, 64) == 2) and np.all(host == 7)
    pinned = ok(rt.cudaMallocHost(64))
    assert rt.cudaMemcpy(d1, pinned, 64, D2D) == direction    # pinned memory is host memory
    ok(rt.cudaFreeHost(pinned))


def test_out_of_range_null_negative_and_read_only_pointers_move_no_byte(dmem):
    d = dmem(100, fill=5)
    host = np.full(200, 9, np.uint8)
    cases = [
        (d, host, 101, H2D),                 # past the end of the device block
        (host, d + 50, 51, D2H),             # from an interior pointer past the end
        (d, host[:50], 60, H2D),             # longer than the source array
        (host[:10], d, 20, D2H),             # longer than the destination array
        (d, None, 4, H2D), (None, d, 4, D2H), (0, d, 4, D2H),
        (d, host, -1, H2D),
        (d, 16, 4, H2D),                     # an unmapped raw host address
        (b"immutable bytes!", d, 8, D2H),    # a read-only destination
        (d, host[::2], 10, H2D),             # a non-contiguous view has no single range
        (d, "a string", 4, H2D), (d, 1.5, 4, H2D),
    ]
    for dst, src, count, kind in cases:
        assert rt.cudaMemcpy(dst, src, count, kind) == (INVALID,), (dst, src, count)
        assert rt.cudaMemcpyAsync(dst, src, count, kind, 0) == (INVALID,), (dst, src, count)
    device(0).synchronize()
    assert np.all(device_bytes(d, 100) == 5) and np.all(host == 9)


def test_a_stale_pointer_into_a_freed_block_is_refused(dmem):
    ptr = ok(rt.cudaMalloc(4096))
    ok(rt.cudaFree(ptr))
    out = np.zeros(8, np.uint8)
    for kind in (D2H, DEFAULT):
        assert rt.cudaMemcpy(out, ptr + 8, 8, kind) == (INVALID,)
    assert rt.cudaMemcpy(ptr, out, 8, DEFAULT) == (INVALID,)


# -- synchronization behavior ----------------------------------------------------------------

def test_async_copy_from_pageable_memory_reads_the_source_before_returning(dmem):
    # "If pageable memory must first be staged to pinned memory, the driver may synchronize with
    # the stream and stage the copy into pinned memory": the source may be reused on return.
    s = Stream(device(0), flags=1)
    d = dmem(4096, fill=0)
    src = pattern(4096, 1)
    expected = src.copy()
    sem = gate(s)
    ok(rt.cudaMemcpyAsync(d, src, 4096, H2D, s))
    src[:] = 0                                   # overwritten while the copy is still queued
    assert not s.query()
    sem.signal()
    s.synchronize()
    assert np.array_equal(device_bytes(d, 4096), expected)


def test_async_copy_from_pinned_memory_is_fully_asynchronous(dmem):
    # "For transfers from pinned host memory to device memory" cudaMemcpyAsync "is fully
    # asynchronous": the copy reads the source when the stream runs it.
    s = Stream(device(0), flags=1)
    d = dmem(256, fill=0)
    pinned = ok(rt.cudaMallocHost(256))
    view = _memory.typed_view(pinned, np.uint8, (256,))
    view[:] = 1
    sem = gate(s)
    ok(rt.cudaMemcpyAsync(d, pinned, 256, H2D, s))
    view[:] = 2
    sem.signal()
    s.synchronize()
    assert np.all(device_bytes(d, 256) == 2)
    ok(rt.cudaFreeHost(pinned))


def test_async_copy_into_pageable_memory_completes_in_stream_order(dmem):
    # The facade returns at once and writes the pageable destination when the stream gets there;
    # the host reads it after synchronizing.
    s = Stream(device(0), flags=1)
    d = dmem(512, fill=4)
    out = np.zeros(512, np.uint8)
    sem = gate(s)
    t0 = time.perf_counter()
    ok(rt.cudaMemcpyAsync(out, d, 512, D2H, s))
    assert time.perf_counter() - t0 < 5 and not out.any()
    sem.signal()
    s.synchronize()
    assert np.all(out == 4)


def test_async_host_to_host_copy_is_fully_synchronous():
    # "For transfers from any host memory to any host memory, the function is fully synchronous
    # with respect to the host."
    s = Stream(device(0), flags=1)
    sem = gate(s)
    threading.Timer(0.2, sem.signal).start()
    src, dst = pattern(1000), np.zeros(1000, np.uint8)
    ok(rt.cudaMemcpyAsync(dst, src, 1000, H2H, s))
    assert np.array_equal(dst, src)


def test_memcpy_waits_for_prior_work_on_the_legacy_stream_and_blocking_streams(dmem):
    # cudaMemcpy is issued on the legacy default stream, which "waits on all blocking streams"
    # before its action; D2H "returns only once the copy has completed".
    d = dmem(4096, fill=0)
    blocking = Stream(device(0))
    sem = gate(blocking)
    ok(rt.cudaMemsetAsync(d, 0x5A, 4096, blocking))
    threading.Timer(0.2, sem.signal).start()
    out = np.zeros(4096, np.uint8)
    ok(rt.cudaMemcpy(out, d, 4096, D2H))
    assert np.all(out == 0x5A)
    legacy = device(0).legacy
    sem = gate(legacy)
    legacy.launch(_memory.typed_view(d, np.uint8, (4096,)).fill, (0x33,), name="fill")
    threading.Timer(0.2, sem.signal).start()
    ok(rt.cudaMemcpy(out, d, 4096, D2H))
    assert np.all(out == 0x33)


def test_memcpy_does_not_wait_for_non_blocking_streams(dmem):
    # cudaStreamNonBlocking: the stream "may run concurrently with work in stream 0 ... and
    # should perform no implicit synchronization with stream 0".
    s = Stream(device(0), flags=1)
    d = dmem(64, fill=0)
    sem = gate(s)
    try:
        ok(rt.cudaMemcpy(d, pattern(64), 64, H2D))
        assert not s.query()                 # returned while the non-blocking stream is held
        assert np.array_equal(device_bytes(d, 64), pattern(64))
    finally:
        sem.signal()
    s.synchronize()


def test_synchronous_device_to_device_copy_does_not_block_the_host(dmem):
    # "For transfers from device memory to device memory, no host-side synchronization is
    # performed." The copy still runs after the legacy stream's earlier work.
    a, b = dmem(1024, fill=8), dmem(1024, fill=0)
    legacy = device(0).legacy
    sem = gate(legacy)
    try:
        ok(rt.cudaMemcpy(b, a, 1024, D2D))
        assert not legacy.query() and not device_bytes(b, 1024).any()
    finally:
        sem.signal()
    legacy.synchronize()
    assert np.all(device_bytes(b, 1024) == 8)


def test_synchronous_copies_involving_managed_memory_wait(dmem):
    # Unified Memory: transfers "are fully synchronous with respect to the host" (CUDA 11 page).
    a = dmem(64, fill=6)
    m = ok(rt.cudaMallocManaged(64, rt.cudaMemAttachGlobal))
    legacy = device(0).legacy
    sem = gate(legacy)
    threading.Timer(0.2, sem.signal).start()
    ok(rt.cudaMemcpy(m, a, 64, D2D))
    assert np.all(_memory.typed_view(m, np.uint8, (64,)) == 6)
    ok(rt.cudaFree(m))


def test_a_synchronizing_copy_from_a_host_function_is_not_permitted(dmem):
    # cudaLaunchHostFunc: "The host function must not make any CUDA API calls ... may result in
    # cudaErrorNotPermitted" — instead of the deadlock a wait on its own stream would be.
    s = Stream(device(0))
    d = dmem(16, fill=1)
    results = []

    def host_fn():
        out = np.zeros(16, np.uint8)
        results.append(rt.cudaMemcpy(out, d, 16, D2H))         # would wait for this very stream
        results.append(rt.cudaMemsetAsync(d, 2, 16, s))        # queueing more work is fine

    s.launch(host_fn, name="host_fn", kind="host")
    s.synchronize()
    assert results == [(cudaError_t.cudaErrorNotPermitted,), (OK,)]
    s.synchronize()
    assert np.all(device_bytes(d, 16) == 2)


def test_copies_on_one_stream_run_in_order_with_sets(dmem):
    s = Stream(device(0), flags=1)
    n = 1 << 16
    a, b = dmem(n), dmem(n)
    out = np.zeros(n, np.uint8)
    for i in range(20):
        ok(rt.cudaMemsetAsync(a, i, n, s))
        ok(rt.cudaMemcpyAsync(b, a, n, D2D, s))
        ok(rt.cudaMemsetAsync(a + i * 100, 255, 10, s))
    ok(rt.cudaMemcpyAsync(out, b, n, D2H, s))
    s.synchronize()
    assert np.all(out == 19)


# -- memset ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, byte", [(0, 0), (0x7F, 0x7F), (0x1FF, 0xFF), (-1, 0xFF), (256 + 3, 3)])
def test_memset_uses_the_low_byte_of_value(dmem, value, byte):
    # cudaMemset "Fills the first count bytes ... with the constant byte value value" (an int
    # converted to unsigned char).
    d = dmem(300, fill=0xEE)
    ok(rt.cudaMemset(d + 10, value, 100))
    device(0).synchronize()
    expected = np.full(300, 0xEE, np.uint8)
    expected[10:110] = byte
    assert np.array_equal(device_bytes(d, 300), expected)


def test_memset_checks_its_target_before_writing(dmem):
    d = dmem(64, fill=1)
    host = np.zeros(64, np.uint8)
    assert rt.cudaMemset(host, 3, 64) == (INVALID,)            # pageable host memory
    assert rt.cudaMemset(host.ctypes.data, 3, 64) == (INVALID,)
    assert rt.cudaMemset(d, 3, 65) == (INVALID,)
    assert rt.cudaMemset(d + 60, 3, 5) == (INVALID,)
    assert rt.cudaMemset(d, 3, -1) == (INVALID,)
    assert rt.cudaMemset(0, 3, 4) == (INVALID,)
    assert rt.cudaMemset(d, 3.5, 4) == (INVALID,)
    assert rt.cudaMemsetAsync(d, 3, 4, 0xBAD)[0] == cudaError_t.cudaErrorInvalidResourceHandle
    device(0).synchronize()
    assert np.all(device_bytes(d, 64) == 1) and not host.any()
    assert rt.cudaMemset(d, 3, 0) == (OK,)


def test_memset_of_device_memory_is_asynchronous_and_of_pinned_memory_synchronous(dmem):
    # "The synchronous memset functions are asynchronous with respect to the host except when
    # the target is pinned host memory or a Unified Memory region".
    d = dmem(128, fill=0)
    legacy = device(0).legacy
    sem = gate(legacy)
    try:
        ok(rt.cudaMemset(d, 9, 128))
        assert not legacy.query()
    finally:
        sem.signal()
    legacy.synchronize()
    assert np.all(device_bytes(d, 128) == 9)
    pinned = ok(rt.cudaMallocHost(128))
    sem = gate(legacy)
    threading.Timer(0.2, sem.signal).start()
    ok(rt.cudaMemset(pinned, 4, 128))
    assert np.all(_memory.typed_view(pinned, np.uint8, (128,)) == 4)
    ok(rt.cudaFreeHost(pinned))


def test_memset_2d_sets_only_the_rectangle(dmem):
    ptr, pitch = ok(rt.cudaMallocPitch(40, 6))
    base = _memory.typed_view(ptr, np.uint8, (6 * pitch,))
    base[:] = 0
    ok(rt.cudaMemset2D(ptr + 3, pitch, 7, 30, 5))
    s = Stream(device(0), flags=1)
    ok(rt.cudaMemset2DAsync(ptr + pitch * 5, pitch, 1, 40, 1, s))
    s.synchronize()
    device(0).synchronize()
    expected = np.zeros((6, pitch), np.uint8)
    expected[:5, 3:33] = 7
    expected[5, :40] = 1
    assert np.array_equal(base.reshape(6, pitch), expected)
    assert rt.cudaMemset2D(ptr, pitch, 1, pitch + 1, 2) == (INVALID,)
    assert rt.cudaMemset2D(ptr, pitch, 1, 40, 7) == (INVALID,)       # one row too many
    ok(rt.cudaFree(ptr))


# -- 2D and peer copies ----------------------------------------------------------------------

def test_memcpy_2d_between_pitched_buffers_matches_numpy(dmem):
    # cudaMemcpy2D "Copies a matrix (height rows of width bytes each)"; dpitch and spitch are
    # "the widths in memory in bytes of the 2D arrays ..., including any padding".
    rows, width = 9, 50
    host = pattern(rows * 64, 2).reshape(rows, 64)               # spitch 64, copy 50 of them
    ptr, pitch = ok(rt.cudaMallocPitch(width, rows))
    _memory.typed_view(ptr, np.uint8, (rows * pitch,))[:] = 0xCC
    ok(rt.cudaMemcpy2D(ptr, pitch, host, 64, width, rows, H2D))
    dev = _memory.typed_view(ptr, np.uint8, (rows * pitch,)).reshape(rows, pitch)
    assert np.array_equal(dev[:, :width], host[:, :width]) and np.all(dev[:, width:] == 0xCC)
    other = dmem(rows * 80, fill=0)
    s = Stream(device(0), flags=1)
    ok(rt.cudaMemcpy2DAsync(other + 5, 80, ptr, pitch, width, rows, D2D, s))
    out = np.full((rows, 60), 1, np.uint8)
    ok(rt.cudaMemcpy2DAsync(out, 60, other + 5, 80, width, rows, D2H, s))
    s.synchronize()
    assert np.array_equal(out[:, :width], host[:, :width]) and np.all(out[:, width:] == 1)
    ok(rt.cudaFree(ptr))


def test_memcpy_2d_pitch_errors(dmem):
    # cudaMemcpy2D: "width must not exceed either dpitch or spitch"; it "returns an error if
    # dpitch or spitch exceeds the maximum allowed" (cudaErrorInvalidPitchValue).
    d = dmem(1000)
    host = np.zeros(1000, np.uint8)
    pitch_err = (cudaError_t.cudaErrorInvalidPitchValue,)
    assert rt.cudaMemcpy2D(d, 10, host, 20, 11, 5, H2D) == pitch_err
    assert rt.cudaMemcpy2D(d, 20, host, 10, 11, 5, H2D) == pitch_err
    assert rt.cudaMemcpy2D(d, 1 << 31, host, 20, 10, 1, H2D) == pitch_err
    assert rt.cudaMemcpy2D(d, 100, host, 100, 100, 11, H2D) == (INVALID,)   # 11 rows do not fit
    assert rt.cudaMemcpy2D(d, 100, host, 100, 100, 10, H2D) == (OK,)
    assert rt.cudaMemcpy2D(d, 100, host, 100, 0, 10, H2D) == (OK,)
    assert rt.cudaMemcpy2D(d, 100, host, 100, 10, 2, 7) == (cudaError_t.cudaErrorInvalidMemcpyDirection,)


def test_overlapping_copies_within_one_allocation_behave_like_memmove(dmem):
    # CUDA leaves overlapping copies undefined; the facade documents memmove semantics.
    n = 10000
    d = dmem(n)
    data = pattern(n, 5)
    for dst_off, src_off, count in [(100, 0, 5000), (0, 100, 5000), (1, 0, 9000)]:
        _memory.typed_view(d, np.uint8, (n,))[:] = data
        expected = data.copy()
        expected[dst_off:dst_off + count] = data[src_off:src_off + count]
        ok(rt.cudaMemcpy(d + dst_off, d + src_off, count, D2D))
        device(0).synchronize()
        assert np.array_equal(device_bytes(d, n), expected)


def test_large_copies_and_sets_split_across_the_cmg_are_exact(dmem, monkeypatch):
    monkeypatch.setattr(_rt_copy, "COPY_SPLIT_BYTES", 1 << 20)     # the module that reads them
    monkeypatch.setattr(_rt_copy, "_MIN_PART", 1 << 18)
    monkeypatch.setattr(_rt_copy, "COPY_SPLIT_MIN_CORES", 1)
    calls = []
    apply = streamq.Queue.apply
    monkeypatch.setattr(streamq.Queue, "apply", lambda q, n, fn: (calls.append(n), apply(q, n, fn))[1])
    n = (3 << 20) + 12345
    src = pattern(n, 9)
    a, b = dmem(n), dmem(n)
    ok(rt.cudaMemcpy(a, src, n, H2D))
    ok(rt.cudaMemcpy(b, a, n, D2D))
    out = np.zeros(n, np.uint8)
    ok(rt.cudaMemcpy(out, b, n, D2H))
    assert np.array_equal(out, src)
    ok(rt.cudaMemset(a, 0x42, n))
    ok(rt.cudaMemcpy(out, a, n, D2H))
    assert np.all(out == 0x42)
    parts = min(device(0).cmg.ncores, n // (1 << 18))
    assert calls and all(c == parts for c in calls)     # every big op was split across the CMG


def test_peer_copies_check_their_devices(dmem):
    n = 256
    a, b = dmem(n, fill=3), dmem(n, fill=0)
    ok(rt.cudaMemcpyPeer(b, 0, a, 0, n))
    device(0).synchronize()
    assert np.all(device_bytes(b, n) == 3)
    assert rt.cudaMemcpyPeer(b, 7, a, 0, n) == (cudaError_t.cudaErrorInvalidDevice,)
    host = np.zeros(n, np.uint8)
    assert rt.cudaMemcpyPeer(host, 0, a, 0, n) == (INVALID,)
    s = Stream(device(0), flags=1)
    ok(rt.cudaMemsetAsync(a, 4, n, s))
    ok(rt.cudaMemcpyPeerAsync(b, 0, a, 0, n, s))
    s.synchronize()
    assert np.all(device_bytes(b, n) == 4)


# -- many streams and host threads -----------------------------------------------------------

def test_many_threads_and_streams_copy_disjoint_slices_of_one_buffer(dmem):
    threads_n, per = 8, 64 * 1024
    big = dmem(threads_n * per, fill=0)
    results = [None] * threads_n

    def worker(k):
        s = Stream(device(0), flags=k % 2)     # blocking and non-blocking streams mixed
        src = pattern(per, k)
        for _ in range(5):
            ok(rt.cudaMemcpyAsync(big + k * per, src, per, H2D, s))
            ok(rt.cudaMemsetAsync(big + k * per, k, 16, s))
        out = np.empty(per, np.uint8)
        ok(rt.cudaMemcpyAsync(out, big + k * per, per, D2H, s))
        s.synchronize()
        results[k] = out

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    for k, out in enumerate(results):
        expected = pattern(per, k)
        expected[:16] = k
        assert np.array_equal(out, expected), k


# -- capture, faults, the queue log ----------------------------------------------------------

class RecordingCapture:
    """A stand-in for the graph code's capture object: records what launch() hands it."""

    def __init__(self):
        self.ops = []

    def add(self, stream, fn, args, **kw):
        self.ops.append((fn, args, kw))


def test_capture_records_device_copies_and_refuses_pageable_ones(dmem):
    s = Stream(device(0), flags=1)
    d1, d2 = dmem(64, fill=1), dmem(64, fill=0)
    capture = s.capture = RecordingCapture()
    try:
        ok(rt.cudaMemcpyAsync(d2, d1, 64, D2D, s))
        ok(rt.cudaMemsetAsync(d1, 5, 8, s))
        unsupported = (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        assert rt.cudaMemcpyAsync(d2, np.zeros(64, np.uint8), 64, H2D, s) == unsupported
        assert rt.cudaMemcpyAsync(np.zeros(64, np.uint8), d2, 64, D2H, s) == unsupported
        assert rt.cudaMallocAsync(64, s) == (cudaError_t.cudaErrorStreamCaptureUnsupported, None)
        assert rt.cudaFreeAsync(d1, s) == unsupported
        names = [kw["name"] for _, _, kw in capture.ops]
        assert names == ["memcpy.DtoD", "memset"]
    finally:
        s.capture = None
    s.synchronize()
    assert not device_bytes(d2, 64).any() and np.all(device_bytes(d1, 64) == 1)   # captured, not run


def test_memcpy_log_records_name_kind_and_exact_buffers(dmem, tmp_path):
    path = tmp_path / "log.jsonl"
    d = dmem(4096)
    host = pattern(1024)
    out = np.zeros(512, np.uint8)
    trace.enable(path)
    try:
        ok(rt.cudaMemcpy(d + 256, host, 1024, H2D))
        ok(rt.cudaMemsetAsync(d, 1, 100, 0))
        ok(rt.cudaMemcpy(out, d + 512, 512, D2H))
        ptr, pitch = ok(rt.cudaMallocPitch(16, 4))
        ok(rt.cudaMemcpy2D(ptr, pitch, host, 16, 16, 4, H2D))
        device(0).synchronize()
        ok(rt.cudaFree(ptr))
    finally:
        trace.disable()
    records = [json.loads(line) for line in open(path)]
    tasks = [r for r in records if r["type"] == "task" and r["kind"] in ("memcpy", "memset")]
    h2d = next(r for r in tasks if r["name"] == "memcpy.HtoD")
    assert h2d["kind"] == "memcpy" and h2d["status"] == "ok"
    assert h2d["writes"] == [{"buffer": d, "offset": 256, "dtype": "|u1", "shape": [1024], "strides": [1],
                              "bytes": 1024}]
    assert h2d["reads"][0]["buffer"] == host.ctypes.data and h2d["reads"][0]["bytes"] == 1024
    mset = next(r for r in tasks if r["name"] == "memset")
    assert mset["kind"] == "memset" and mset["writes"][0]["buffer"] == d and mset["writes"][0]["bytes"] == 100
    d2h = next(r for r in tasks if r["name"] == "memcpy.DtoH")
    assert d2h["reads"][0]["buffer"] == d and d2h["reads"][0]["offset"] == 512
    assert d2h["writes"][0]["buffer"] == out.ctypes.data
    two_d = [r for r in tasks if r["name"] == "memcpy.HtoD" and r["writes"][0]["buffer"] == ptr]
    assert two_d[0]["writes"][0]["shape"] == [4, 16] and two_d[0]["writes"][0]["strides"] == [pitch, 1]
    syncs = [r for r in records if r["type"] == "host_sync" and r["what"] == "cudaMemcpy"]
    assert len(syncs) >= 2 and all(r["end_us"] >= r["start_us"] for r in syncs)
    reads = [r for r in records if r["type"] == "host_read"]
    assert {"buffer": d, "offset": 512, "bytes": 512} == {k: reads[0][k] for k in ("buffer", "offset", "bytes")}


def test_a_device_fault_is_returned_by_later_copies_until_reset(dmem):
    # "Asynchronous errors are 'sticky' ... they will continue to be returned by subsequent
    # calls"; cudaErrorLaunchFailure leaves the context unusable until reset.
    d = dmem(64)
    s = Stream(device(0), flags=1)
    try:
        s.launch(lambda: 1 / 0, name="bad_kernel")
        s.synchronize()
        failure = (cudaError_t.cudaErrorLaunchFailure,)
        assert rt.cudaMemcpy(d, np.zeros(64, np.uint8), 64, H2D) == failure
        assert rt.cudaMemsetAsync(d, 1, 64, s) == failure
        assert rt.cudaMalloc(64) == (cudaError_t.cudaErrorLaunchFailure, None)
    finally:
        device(0).reset()      # cudaDeviceReset (it may also free the device's allocations)
    fresh = ok(rt.cudaMalloc(64))
    ok(rt.cudaMemset(fresh, 1, 64))
    ok(rt.cudaFree(fresh))


def test_a_cuda_python_style_program_runs_through_the_runtime_module():
    # The facade's promise: code written against cuda.bindings.runtime runs unchanged.
    cudart = pytest.importorskip("streamq.cuda_facade.runtime")
    err, stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
    assert err == OK
    n = 1 << 12
    host_in = np.arange(n, dtype=np.float32)
    host_out = np.zeros(n, np.float32)
    err, dptr = cudart.cudaMallocAsync(host_in.nbytes, stream)
    assert err == OK
    assert cudart.cudaMemcpyAsync(dptr, host_in.ctypes.data, host_in.nbytes,
                                  cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)[0] == OK
    assert cudart.cudaMemsetAsync(dptr, 0, 4 * 10, stream)[0] == OK
    assert cudart.cudaMemcpyAsync(host_out.ctypes.data, dptr, host_in.nbytes,
                                  cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)[0] == OK
    assert cudart.cudaFreeAsync(dptr, stream)[0] == OK
    assert cudart.cudaStreamSynchronize(stream)[0] == OK
    expected = host_in.copy()
    expected[:10] = 0
    assert np.array_equal(host_out, expected)
    assert cudart.cudaStreamDestroy(stream)[0] == OK
