"""CUDA facade memory: allocation, freeing, pools, pinned/managed/registered memory, pointer attributes.

Each test states the CUDA runtime documentation rule it checks (CUDA Runtime API,
"Memory Management" and "Stream Ordered Memory Allocator" sections, unless noted).
"""

import json
import threading

import numpy as np
import pytest

import streamq
from streamq import trace
from streamq.cuda_facade import _memory
from streamq.cuda_facade import _rt_memory as rt
from streamq.cuda_facade._context import Stream, device
from streamq.cuda_facade._errors import cudaError_t, last_error, last_error_detail

pytestmark = pytest.mark.timeout(60)

OK = cudaError_t.cudaSuccess
INVALID = cudaError_t.cudaErrorInvalidValue
A = rt.cudaMemPoolAttr
H2D = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
D2H = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost


def ok(result):
    """Assert a facade call succeeded and return its results (one value unwrapped)."""
    assert result[0] == OK, (result, last_error_detail())
    return result[1] if len(result) == 2 else result[1:]


def read_back(ptr, nbytes):
    out = np.empty(nbytes, np.uint8)
    ok(rt.cudaMemcpy(out, ptr, nbytes, D2H))
    return out


def write(ptr, data):
    data = np.ascontiguousarray(data)
    ok(rt.cudaMemcpy(ptr, data, data.nbytes, H2D))


# -- cudaMalloc / cudaFree -------------------------------------------------------------------

def test_malloc_returns_aligned_device_memory_that_holds_data():
    # "The memory is suitably aligned for any kind of variable" (cudaMalloc); cudaMalloc's
    # pointers are 256-byte aligned on every GPU.
    ptrs = [ok(rt.cudaMalloc(n)) for n in (1, 100, 4096, 1 << 20)]
    for ptr, n in zip(ptrs, (1, 100, 4096, 1 << 20)):
        assert isinstance(ptr, int) and ptr % 256 == 0
        data = (np.arange(n) * 7 % 251).astype(np.uint8)
        write(ptr, data)
        assert np.array_equal(read_back(ptr, n), data)
    assert len(set(ptrs)) == len(ptrs)
    for ptr in ptrs:
        ok(rt.cudaFree(ptr))


def test_malloc_zero_bytes_returns_null_and_free_null_is_a_no_op():
    # cudaFree: "If devPtr is 0, no operation is performed."
    assert ok(rt.cudaMalloc(0)) == 0
    assert rt.cudaFree(0) == (OK,)
    assert rt.cudaFree(None) == (OK,)


@pytest.mark.parametrize("size", [-1, 1.5, "8", None, True])
def test_malloc_rejects_bad_sizes(size):
    assert rt.cudaMalloc(size) == (INVALID, None)
    assert last_error() == INVALID


def test_malloc_beyond_available_memory_is_a_memory_allocation_error():
    # cudaMalloc: "returns cudaErrorMemoryAllocation in case of failure" (the host must survive it).
    err, ptr = rt.cudaMalloc(1 << 50)
    assert err == cudaError_t.cudaErrorMemoryAllocation and ptr is None


def test_double_free_and_unknown_pointers_are_invalid_value():
    # cudaFree: "if cudaFree(devPtr) has already been called before, an error is returned"
    # (cudaErrorInvalidValue in CUDA 12's documentation).
    ptr = ok(rt.cudaMalloc(1000))
    ok(rt.cudaFree(ptr))
    assert rt.cudaFree(ptr) == (INVALID,)
    assert "already freed" in last_error_detail()
    host = np.zeros(16)
    assert rt.cudaFree(host.ctypes.data) == (INVALID,)
    assert rt.cudaFree(host) == (INVALID,)
    live = ok(rt.cudaMalloc(64))
    assert rt.cudaFree(np.array([live])) == (INVALID,)   # an array holding an address is not a pointer
    assert rt.cudaFree(np.array(live)) == (INVALID,)
    ok(rt.cudaFree(live))


def test_free_of_an_interior_pointer_is_refused_and_leaves_the_block_alive():
    ptr = ok(rt.cudaMalloc(1024))
    write(ptr, np.full(1024, 9, np.uint8))
    assert rt.cudaFree(ptr + 256) == (INVALID,)
    assert "inside a block" in last_error_detail()
    assert np.all(read_back(ptr, 1024) == 9)
    ok(rt.cudaFree(ptr))


def test_free_host_refuses_device_memory_and_free_refuses_pinned_memory():
    # cudaFree: "The device version of cudaFree cannot be used with a *devPtr allocated using
    # the host API, and vice versa."
    dptr = ok(rt.cudaMalloc(64))
    hptr = ok(rt.cudaMallocHost(64))
    assert rt.cudaFreeHost(dptr) == (INVALID,)
    assert rt.cudaFree(hptr) == (INVALID,)
    ok(rt.cudaFree(dptr))
    ok(rt.cudaFreeHost(hptr))


def test_freed_memory_is_refused_even_while_the_pool_keeps_it():
    # A freed pointer must never be accepted again, although the caching pool still holds
    # (and may hand out again) its pages.
    ptr = ok(rt.cudaMalloc(4096))
    ok(rt.cudaFree(ptr))
    out = np.empty(16, np.uint8)
    assert rt.cudaMemcpy(out, ptr, 16, D2H) == (INVALID,)
    assert rt.cudaMemcpy(out, ptr + 64, 16, rt.cudaMemcpyKind.cudaMemcpyDefault) == (INVALID,)
    assert "freed" in last_error_detail()
    assert rt.cudaMemset(ptr, 0, 16) == (INVALID,)


def test_free_waits_for_queued_work_that_uses_the_block():
    # cudaFree synchronizes implicitly: work queued before it finishes before the block can be
    # reused, so a new allocation never receives memory a queued op still writes.
    s = Stream(device(0))
    gate = streamq.Semaphore(0)
    ptr = ok(rt.cudaMalloc(1 << 16))
    s.launch(gate.wait, (10,), name="gate")
    ok(rt.cudaMemsetAsync(ptr, 5, 1 << 16, s))
    threading.Timer(0.2, gate.signal).start()
    ok(rt.cudaFree(ptr))
    assert s.query()                       # the memset ran before cudaFree returned
    again = ok(rt.cudaMalloc(1 << 16))     # typically the same block, from the cache
    write(again, np.zeros(1 << 16, np.uint8))
    s.synchronize()
    assert not read_back(again, 1 << 16).any()
    ok(rt.cudaFree(again))


def test_concurrent_frees_of_one_pointer_succeed_exactly_once():
    ptrs = [ok(rt.cudaMalloc(512)) for _ in range(50)]
    results = []
    lock = threading.Lock()

    def free_all():
        for p in ptrs:
            code = rt.cudaFree(p)[0]
            with lock:
                results.append((p, code))

    threads = [threading.Thread(target=free_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for p in ptrs:
        codes = sorted(code for q, code in results if q == p)
        assert codes == [OK, INVALID, INVALID, INVALID]


def test_many_threads_allocate_copy_and_free_without_mixing_data():
    errors = []

    def worker(k):
        s = Stream(device(0), flags=1)
        try:
            for i in range(20):
                n = 1000 + 37 * i + k
                ptr = ok(rt.cudaMallocAsync(n, s))
                data = np.full(n, (k * 31 + i) % 256, np.uint8)
                ok(rt.cudaMemcpyAsync(ptr, data, n, H2D, s))
                out = np.empty(n, np.uint8)
                ok(rt.cudaMemcpyAsync(out, ptr, n, D2H, s))
                ok(rt.cudaFreeAsync(ptr, s))
                s.synchronize()
                if not np.array_equal(out, data):
                    errors.append((k, i))
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not errors


# -- stream-ordered allocation ---------------------------------------------------------------

def test_free_async_returns_the_block_only_when_the_stream_reaches_it():
    # cudaFreeAsync: "Frees memory with stream ordered semantics" — work queued before the free
    # still owns the block; the pointer is invalid for calls made after cudaFreeAsync.
    s = Stream(device(0))
    pool = _memory.pool(0)
    gate = streamq.Semaphore(0)
    ptr = ok(rt.cudaMallocAsync(1 << 20, s))
    s.launch(gate.wait, (10,), name="gate")
    ok(rt.cudaMemsetAsync(ptr, 1, 1 << 20, s))
    used = pool.used
    ok(rt.cudaFreeAsync(ptr, s))
    assert pool.used == used                        # not yet: the stream has not reached the free
    assert rt.cudaMemsetAsync(ptr, 0, 4, s) == (INVALID,)   # but the pointer is dead for new calls
    assert rt.cudaFreeAsync(ptr, s) == (INVALID,)
    gate.signal()
    s.synchronize()
    assert pool.used == used - (1 << 20)


def test_malloc_async_memory_is_usable_in_stream_order_and_from_other_streams():
    s1, s2 = Stream(device(0)), Stream(device(0), flags=1)
    ptr = ok(rt.cudaMallocAsync(256, s1))
    ok(rt.cudaMemsetAsync(ptr, 3, 256, s1))
    s1.synchronize()
    out = np.empty(256, np.uint8)
    ok(rt.cudaMemcpyAsync(out, ptr, 256, D2H, s2))
    s2.synchronize()
    assert np.all(out == 3)
    ok(rt.cudaFreeAsync(ptr, s2))
    s2.synchronize()


def test_stream_ordered_calls_check_the_stream_handle():
    dead = Stream(device(0))
    from streamq.cuda_facade._context import forget_stream
    forget_stream(dead)
    assert rt.cudaMallocAsync(64, 0xDEAD)[0] == cudaError_t.cudaErrorInvalidResourceHandle
    assert rt.cudaMallocAsync(64, dead)[0] == cudaError_t.cudaErrorInvalidResourceHandle
    ptr = ok(rt.cudaMalloc(64))
    assert rt.cudaFreeAsync(ptr, dead)[0] == cudaError_t.cudaErrorInvalidResourceHandle
    ok(rt.cudaFree(ptr))                        # still live: the failed free did nothing


# -- pinned, managed and registered host memory ----------------------------------------------

def test_pinned_host_memory_and_host_alloc_flags():
    # cudaHostAlloc flags: cudaHostAllocDefault/Portable/Mapped/WriteCombined; other bits are
    # invalid. cudaHostGetFlags returns the flags the memory was allocated with.
    flags = rt.cudaHostAllocPortable | rt.cudaHostAllocMapped
    ptr = ok(rt.cudaHostAlloc(1000, flags))
    assert ok(rt.cudaHostGetFlags(ptr)) == flags
    assert ok(rt.cudaHostGetDevicePointer(ptr, 0)) == ptr     # one address space
    assert rt.cudaHostAlloc(64, 0x40) == (INVALID, None)
    ok(rt.cudaFreeHost(ptr))
    assert rt.cudaFreeHost(ptr) == (INVALID,)
    assert ok(rt.cudaMallocHost(0)) == 0


def test_managed_memory_flags_and_size():
    # cudaMallocManaged: flags "must be either cudaMemAttachGlobal or cudaMemAttachHost";
    # "If size is 0, cudaMallocManaged returns cudaErrorInvalidValue".
    ptr = ok(rt.cudaMallocManaged(4096, rt.cudaMemAttachGlobal))
    assert rt.cudaMallocManaged(0, rt.cudaMemAttachGlobal) == (INVALID, None)
    assert rt.cudaMallocManaged(64, rt.cudaMemAttachSingle) == (INVALID, None)
    assert rt.cudaMallocManaged(64, 0) == (INVALID, None)
    ok(rt.cudaMemset(ptr, 0xAB, 4096))        # managed target: cudaMemset is fully synchronous
    view = _memory.typed_view(ptr, np.uint8, (4096,))
    assert np.all(view == 0xAB)
    ok(rt.cudaFree(ptr))


def test_host_register_makes_an_array_pinned_until_unregistered():
    # cudaHostRegister "page-locks the memory range"; registering it twice gives
    # cudaErrorHostMemoryAlreadyRegistered; unregistering memory that is not registered gives
    # cudaErrorHostMemoryNotRegistered.
    arr = np.arange(100, dtype=np.float64)
    before = ok(rt.cudaPointerGetAttributes(arr))
    assert before.type == rt.cudaMemoryType.cudaMemoryTypeUnregistered
    ok(rt.cudaHostRegister(arr, arr.nbytes, rt.cudaHostRegisterDefault))
    attrs = ok(rt.cudaPointerGetAttributes(arr.ctypes.data + 8))
    assert attrs.type == rt.cudaMemoryType.cudaMemoryTypeHost and attrs.hostPointer == arr.ctypes.data + 8
    assert rt.cudaHostRegister(arr, 8, 0) == (cudaError_t.cudaErrorHostMemoryAlreadyRegistered,)
    assert rt.cudaHostRegister(arr[50:], 8, 0) == (cudaError_t.cudaErrorHostMemoryAlreadyRegistered,)
    assert rt.cudaHostUnregister(arr.ctypes.data + 8) == (cudaError_t.cudaErrorHostMemoryNotRegistered,)
    ok(rt.cudaHostUnregister(arr))
    assert rt.cudaHostUnregister(arr) == (cudaError_t.cudaErrorHostMemoryNotRegistered,)
    assert ok(rt.cudaPointerGetAttributes(arr)).type == rt.cudaMemoryType.cudaMemoryTypeUnregistered


def test_host_register_checks_flags_size_and_read_only_memory():
    arr = np.zeros(64, np.uint8)
    assert rt.cudaHostRegister(arr, 64, 0x10) == (INVALID,)
    assert rt.cudaHostRegister(arr, 0, 0) == (INVALID,)
    assert rt.cudaHostRegister(arr, 65, 0) == (INVALID,)
    dptr = ok(rt.cudaMalloc(64))
    assert rt.cudaHostRegister(dptr, 64, 0) == (INVALID,)
    ok(rt.cudaFree(dptr))
    frozen = np.arange(64, dtype=np.uint8)
    frozen.flags.writeable = False
    assert rt.cudaHostRegister(frozen, 64, 0) == (INVALID,)
    ok(rt.cudaHostRegister(frozen, 64, rt.cudaHostRegisterReadOnly))
    dptr = ok(rt.cudaMalloc(64))
    ok(rt.cudaMemcpy(dptr, frozen, 64, H2D))                  # reading it is fine
    assert rt.cudaMemcpy(frozen, dptr, 64, D2H) == (INVALID,)  # writing it is not
    assert np.array_equal(read_back(dptr, 64), np.arange(64))
    ok(rt.cudaHostUnregister(frozen))
    ok(rt.cudaFree(dptr))


def test_host_register_accepts_a_raw_address_of_live_memory():
    arr = np.zeros(4096, np.uint8)
    ok(rt.cudaHostRegister(arr.ctypes.data, 4096, 0))
    assert ok(rt.cudaPointerGetAttributes(arr.ctypes.data)).type == rt.cudaMemoryType.cudaMemoryTypeHost
    ok(rt.cudaHostUnregister(arr.ctypes.data))
    assert rt.cudaHostRegister(4096, 4096, 0) == (INVALID,)   # page 1 is never mapped


# -- cudaMallocPitch -------------------------------------------------------------------------

def test_malloc_pitch_pads_rows_and_holds_height_rows():
    # cudaMallocPitch: "Allocates at least width (in bytes) * height bytes"; the pitch is the
    # width in bytes of the allocation's rows.
    ptr, pitch = ok(rt.cudaMallocPitch(100, 7))
    assert pitch >= 100 and pitch % 256 == 0
    write(ptr + 6 * pitch, np.full(100, 1, np.uint8))        # the last row is inside the block
    assert np.all(read_back(ptr + 6 * pitch, 100) == 1)
    ok(rt.cudaFree(ptr))
    assert rt.cudaMallocPitch(-1, 2) == (INVALID, None, None)


# -- pointer attributes ----------------------------------------------------------------------

def test_pointer_attributes_for_every_kind_of_memory():
    # cudaPointerAttributes: type is Unregistered/Host/Device/Managed; devicePointer/hostPointer
    # are "NULL if no such address exists"; device is the allocating (or then-current) device.
    T = rt.cudaMemoryType
    d = ok(rt.cudaMalloc(64))
    h = ok(rt.cudaMallocHost(64))
    m = ok(rt.cudaMallocManaged(64, rt.cudaMemAttachGlobal))
    host = np.zeros(8)
    cases = {d: (T.cudaMemoryTypeDevice, 0, d + 8, 0), h: (T.cudaMemoryTypeHost, 0, h + 8, h + 8),
             m: (T.cudaMemoryTypeManaged, 0, m + 8, m + 8)}
    for ptr, (kind, dev, dptr, hptr) in cases.items():
        attrs = ok(rt.cudaPointerGetAttributes(ptr + 8))
        assert (attrs.type, attrs.device, attrs.devicePointer, attrs.hostPointer) == (kind, dev, dptr, hptr)
    attrs = ok(rt.cudaPointerGetAttributes(host.ctypes.data))
    assert attrs.type == T.cudaMemoryTypeUnregistered and attrs.device == rt.cudaInvalidDeviceId
    assert attrs.devicePointer == 0 and attrs.hostPointer == host.ctypes.data
    assert rt.cudaPointerGetAttributes(0) == (INVALID, None)
    assert rt.cudaPointerGetAttributes(None) == (INVALID, None)
    ok(rt.cudaFree(d))
    assert ok(rt.cudaPointerGetAttributes(d)).type == T.cudaMemoryTypeUnregistered
    ok(rt.cudaFreeHost(h))
    ok(rt.cudaFree(m))


# -- the pool and its attributes -------------------------------------------------------------

def test_default_mem_pool_reports_what_it_holds_and_trims_on_request():
    # cudaMemPoolAttrReservedMemCurrent: "Amount of backing memory currently allocated for the
    # mempool"; UsedMemCurrent: "Amount of memory from the pool that is currently in use";
    # cudaMemPoolTrimTo "Releases memory back to the OS until the pool contains fewer than
    # minBytesToKeep reserved bytes"; the allocator cannot release memory still in use.
    pool = ok(rt.cudaDeviceGetDefaultMemPool(0))
    assert ok(rt.cudaDeviceGetMemPool(0)) == pool

    def attr(a):
        value = ok(rt.cudaMemPoolGetAttribute(pool, a))
        assert isinstance(value, int)
        return int(value)

    ok(rt.cudaMemPoolTrimTo(pool, 0))
    reserved0, used0 = attr(A.cudaMemPoolAttrReservedMemCurrent), attr(A.cudaMemPoolAttrUsedMemCurrent)
    assert reserved0 == used0                  # after a full trim nothing is cached
    size = 3 << 20                             # a size class of its own: 3 MiB exactly
    ptr = ok(rt.cudaMalloc(size))
    assert attr(A.cudaMemPoolAttrUsedMemCurrent) == used0 + size
    assert attr(A.cudaMemPoolAttrReservedMemCurrent) == reserved0 + size
    assert attr(A.cudaMemPoolAttrUsedMemHigh) >= used0 + size
    ok(rt.cudaFree(ptr))
    assert attr(A.cudaMemPoolAttrUsedMemCurrent) == used0
    assert attr(A.cudaMemPoolAttrReservedMemCurrent) == reserved0 + size   # cached, not returned
    again = ok(rt.cudaMalloc(size))
    assert attr(A.cudaMemPoolAttrReservedMemCurrent) == reserved0 + size   # reused, not re-reserved
    ok(rt.cudaMemPoolTrimTo(pool, 0))
    assert attr(A.cudaMemPoolAttrReservedMemCurrent) == reserved0 + size   # in use: kept
    ok(rt.cudaFree(again))
    ok(rt.cudaMemPoolTrimTo(pool, 0))
    assert attr(A.cudaMemPoolAttrReservedMemCurrent) == reserved0
    ok(rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolAttrUsedMemHigh, 0))
    assert attr(A.cudaMemPoolAttrUsedMemHigh) == attr(A.cudaMemPoolAttrUsedMemCurrent)


def test_release_threshold_bounds_what_the_pool_keeps():
    # cudaMemPoolAttrReleaseThreshold: "Amount of reserved memory in bytes to hold onto before
    # trying to release memory back to the OS".
    pool = ok(rt.cudaDeviceGetDefaultMemPool(0))
    old = ok(rt.cudaMemPoolGetAttribute(pool, A.cudaMemPoolAttrReleaseThreshold))
    assert old == (1 << 64) - 1                # the facade keeps freed blocks by default
    try:
        ok(rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolAttrReleaseThreshold, rt.cuuint64_t(0)))
        ptr = ok(rt.cudaMalloc(5 << 20))
        ok(rt.cudaFree(ptr))
        reserved = ok(rt.cudaMemPoolGetAttribute(pool, A.cudaMemPoolAttrReservedMemCurrent))
        assert reserved == ok(rt.cudaMemPoolGetAttribute(pool, A.cudaMemPoolAttrUsedMemCurrent))
    finally:
        ok(rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolAttrReleaseThreshold, old))


def test_mem_pool_attribute_errors():
    pool = ok(rt.cudaDeviceGetDefaultMemPool(0))
    assert rt.cudaMemPoolGetAttribute(pool, 99) == (INVALID, None)
    assert rt.cudaMemPoolGetAttribute(12345, A.cudaMemPoolAttrUsedMemCurrent) == (INVALID, None)
    assert rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolAttrUsedMemCurrent, 0) == (INVALID,)
    assert rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolAttrReservedMemHigh, 5) == (INVALID,)
    assert rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolAttrReleaseThreshold, -1) == (INVALID,)
    # Reuse policies are reported as implemented; asking for another one is refused.
    assert ok(rt.cudaMemPoolGetAttribute(pool, A.cudaMemPoolReuseAllowOpportunistic)) == 1
    ok(rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolReuseAllowOpportunistic, 1))
    assert rt.cudaMemPoolSetAttribute(pool, A.cudaMemPoolReuseAllowOpportunistic, 0) == \
        (cudaError_t.cudaErrorNotSupported,)
    assert rt.cudaDeviceGetDefaultMemPool(99) == (cudaError_t.cudaErrorInvalidDevice, None)
    assert rt.cudaMemPoolTrimTo(pool, -5) == (INVALID,)


def test_mem_get_info_reports_the_nodes_memory():
    # cudaMemGetInfo returns (free, total); the facade's device memory is its NUMA node's.
    free, total = ok(rt.cudaMemGetInfo())
    node = device(0).cmg.numa_node
    path = f"/sys/devices/system/node/node{node}/meminfo"
    if node is None:
        path = "/proc/meminfo"
    try:
        f = open(path)
    except OSError:
        f = open("/proc/meminfo")
    with f:
        expected_total = next(int(line.split()[-2]) * 1024 for line in f if "MemTotal:" in line)
    assert total == expected_total
    assert 0 < free <= total


def resident_fraction(address, nbytes):
    """Fraction of the pages of [address, address + nbytes) in RAM (mincore), -1 if unmapped."""
    import ctypes
    import os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    start = address - address % page
    npages = -(-(address + nbytes - start) // page)
    vec = (ctypes.c_ubyte * npages)()
    if libc.mincore(start, npages * page, vec) != 0:
        return -1
    return sum(v & 1 for v in vec) / npages


def test_device_memory_is_resident_from_allocation_until_trimmed():
    # cudaMemGetInfo must tell the truth: a block counts as used from cudaMalloc on (its pages
    # are in RAM, as a GPU's are), stays held while cached, and goes back to the OS on a trim.
    pool = ok(rt.cudaDeviceGetDefaultMemPool(0))
    ok(rt.cudaMemPoolTrimTo(pool, 0))
    size = 7 << 20                      # a size class no other test uses
    ptr = ok(rt.cudaMalloc(size))
    assert resident_fraction(ptr, size) == 1.0
    ok(rt.cudaFree(ptr))
    assert resident_fraction(ptr, size) == 1.0      # cached by the pool: still held
    ok(rt.cudaMemPoolTrimTo(pool, 0))
    assert resident_fraction(ptr, size) == -1       # unmapped: returned to the OS


# -- the queue log ---------------------------------------------------------------------------

def test_alloc_and_free_records_in_the_queue_log(tmp_path):
    path = tmp_path / "log.jsonl"
    trace.enable(path)
    try:
        d = ok(rt.cudaMalloc(1000))
        h = ok(rt.cudaMallocHost(64))
        ok(rt.cudaFree(d))
        ok(rt.cudaFreeHost(h))
    finally:
        trace.disable()
    records = [json.loads(line) for line in open(path)]
    allocs = {r["buffer"]: r for r in records if r["type"] == "alloc"}
    frees = {r["buffer"]: r for r in records if r["type"] == "free"}
    assert allocs[d]["bytes"] == 1000 and allocs[d]["memory"] == "device" and allocs[d]["device"] == 0
    assert allocs[h]["memory"] == "host" and allocs[h]["device"] == 0
    for r in (allocs[d], frees[d]):
        assert isinstance(r["t_us"], float) and isinstance(r["thread"], int)
    assert frees[d]["t_us"] >= allocs[d]["t_us"] and h in frees
    assert any(r["type"] == "host_sync" and r["what"] == "cudaFree" for r in records)


# -- raw host addresses ----------------------------------------------------------------------

def test_raw_host_addresses_are_checked_against_the_process_mappings():
    maps = _memory.HostMaps()
    arr = np.zeros(10000, np.uint8)
    assert maps.covers(arr.ctypes.data, arr.nbytes, writable=True)
    assert not maps.covers(16, 8, writable=False)                    # page 0 is never mapped
    ro = np.frombuffer(b"\x01" * 5000, np.uint8)                      # read-only bytes object
    assert maps.covers(ro.ctypes.data, 100, writable=False)
    import mmap
    buf = mmap.mmap(-1, 1 << 16)
    view = np.frombuffer(buf, np.uint8)
    addr = view.ctypes.data
    assert maps.covers(addr, 1 << 16, writable=True)
    del view
    buf.close()                                                       # unmapped, still cached
    assert not maps.covers(addr, 1 << 16, writable=True)


def test_release_device_frees_every_block_of_the_device():
    # cudaDeviceReset "Explicitly destroys and cleans up all resources associated with the
    # current device": its allocations become invalid (the runtime's reset calls release_device).
    d = ok(rt.cudaMalloc(4096))
    m = ok(rt.cudaMallocManaged(4096, rt.cudaMemAttachGlobal))
    h = ok(rt.cudaMallocHost(64))
    assert _memory.release_device(0) >= 2
    assert rt.cudaFree(d) == (INVALID,) and rt.cudaFree(m) == (INVALID,)
    assert _memory.pool(0).cached == 0 and _memory.pool(0).used == 0
    ok(rt.cudaFreeHost(h))                                  # pinned host memory is not the device's
