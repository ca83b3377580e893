"""Devices (= CMGs) of the runtime facade, against CUDA's "Device Management" documentation."""

import os
import threading
import time

import pytest
from facade_helpers import WAIT, ok

import streamq
from streamq.cuda_facade import runtime as rt

E = rt.cudaError_t
A = rt.cudaDeviceAttr


@pytest.fixture(autouse=True)
def back_to_device_0(clean_device):
    yield
    rt.cudaSetDevice(0)     # before clean_device's checks, which look at the current device


def node_memory(node):
    """MemTotal of a NUMA node, read here independently of the facade."""
    if node is None:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with open(f"/sys/devices/system/node/node{node}/meminfo") as f:
        for line in f:
            if "MemTotal:" in line:
                return int(line.split()[3]) * 1024
    raise AssertionError("no MemTotal")


def test_device_count_and_properties_describe_the_cmgs():
    cmgs = streamq.topology()
    assert ok(rt.cudaGetDeviceCount()) == len(cmgs)
    for cmg in cmgs:
        prop = ok(rt.cudaGetDeviceProperties(cmg.index))
        assert isinstance(prop, rt.cudaDeviceProp)
        assert prop.multiProcessorCount == len(cmg.cpus)
        assert prop.totalGlobalMem == node_memory(cmg.numa_node)
        assert f"CMG {cmg.index}".encode() in prop.name and isinstance(prop.name, bytes)
        assert prop.maxThreadsPerBlock == 1024 and prop.maxThreadsDim == [1024, 1024, 64]
        assert prop.maxGridSize == [2**31 - 1, 65535, 65535]
        assert prop.warpSize == 32 and prop.streamPrioritiesSupported == 1
        assert prop.unifiedAddressing == 1 and prop.pageableMemoryAccess == 1
        assert len(prop.uuid.bytes) == 16
    # Each call returns its own copy: changing it changes nothing else.
    first = ok(rt.cudaGetDeviceProperties(0))
    first.maxThreadsDim[0] = 1
    assert ok(rt.cudaGetDeviceProperties(0)).maxThreadsDim[0] == 1024


def test_attributes_agree_with_properties():
    prop = ok(rt.cudaGetDeviceProperties(0))
    pairs = {A.cudaDevAttrMaxThreadsPerBlock: prop.maxThreadsPerBlock,
             A.cudaDevAttrMaxBlockDimZ: prop.maxThreadsDim[2],
             A.cudaDevAttrMaxGridDimX: prop.maxGridSize[0],
             A.cudaDevAttrMultiProcessorCount: prop.multiProcessorCount,
             A.cudaDevAttrWarpSize: 32,
             A.cudaDevAttrComputeCapabilityMajor: prop.major,
             A.cudaDevAttrL2CacheSize: prop.l2CacheSize,
             A.cudaDevAttrMaxSharedMemoryPerBlock: prop.sharedMemPerBlock,
             A.cudaDevAttrConcurrentKernels: 1,
             A.cudaDevAttrStreamPrioritiesSupported: 1,
             A.cudaDevAttrMemoryPoolsSupported: 1,
             A.cudaDevAttrMaxTexture1DWidth: 0}
    for attr, want in pairs.items():
        assert ok(rt.cudaDeviceGetAttribute(attr, 0)) == want, attr
    assert ok(rt.cudaDeviceGetAttribute(16, 0)) == prop.multiProcessorCount     # plain int values work
    node = streamq.topology()[0].numa_node
    assert ok(rt.cudaDeviceGetAttribute(A.cudaDevAttrNumaId, 0)) == (-1 if node is None else node)
    # cudaDeviceGetAttribute documents cudaErrorInvalidDevice and cudaErrorInvalidValue.
    assert rt.cudaDeviceGetAttribute(44, 0) == (E.cudaErrorInvalidValue, None)       # no such attribute
    assert rt.cudaDeviceGetAttribute(A.cudaDevAttrWarpSize, 999) == (E.cudaErrorInvalidDevice, None)


def test_set_and_get_device_per_host_thread_and_bad_ordinals():
    n = ok(rt.cudaGetDeviceCount())
    assert ok(rt.cudaGetDevice()) == 0
    for bad in (n, -1, 10**9):
        assert rt.cudaSetDevice(bad) == (E.cudaErrorInvalidDevice,)
        assert rt.cudaGetDeviceProperties(bad) == (E.cudaErrorInvalidDevice, None)
    assert rt.cudaSetDevice(True) == (E.cudaErrorInvalidDevice,)
    assert rt.cudaSetDevice("0") == (E.cudaErrorInvalidDevice,)
    assert ok(rt.cudaGetDevice()) == 0
    # "Sets device as the current device for the calling host thread": other threads keep theirs.
    seen = []
    t = threading.Thread(target=lambda: (rt.cudaSetDevice(n - 1), seen.append(ok(rt.cudaGetDevice()))))
    t.start()
    t.join(WAIT)
    assert seen == [n - 1] and ok(rt.cudaGetDevice()) == 0


def test_versions_and_priority_range():
    assert ok(rt.cudaRuntimeGetVersion()) == 12090
    assert ok(rt.cudaDriverGetVersion()) >= ok(rt.cudaRuntimeGetVersion())
    assert ok(rt.cudaDeviceGetStreamPriorityRange()) == (0, -5)


def test_device_synchronize_waits_for_every_stream():
    streams = [ok(rt.cudaStreamCreateWithFlags(f)) for f in (0, 1, 0, 1)]
    done = []
    for i, s in enumerate(streams):
        ok(rt.cudaLaunchHostFunc(s, lambda _, i=i: (time.sleep(0.02 * i), done.append(i)), None))
    ok(rt.cudaLaunchHostFunc(rt.cudaStreamPerThread, lambda _: done.append("per-thread"), None))
    ok(rt.cudaDeviceSynchronize())
    assert sorted(done, key=str) == [0, 1, 2, 3, "per-thread"]
    for s in streams:
        ok(rt.cudaStreamDestroy(s))


def test_device_reset_waits_then_invalidates_handles():
    s = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    done = []
    ok(rt.cudaLaunchHostFunc(s, lambda _: (time.sleep(0.05), done.append(1)), None))
    ok(rt.cudaDeviceReset())
    assert done == [1]
    assert rt.cudaStreamQuery(s) == (E.cudaErrorInvalidResourceHandle,)
    assert rt.cudaEventRecord(ev, 0) == (E.cudaErrorInvalidResourceHandle,)
    ok(rt.cudaStreamSynchronize(0))     # the default streams survive a reset


def test_device_reset_destroys_the_devices_allocations():
    # cudaDeviceReset: "Destroy all allocations and reset all state on the current device".
    from streamq.cuda_facade import _memory, device_array
    arr = device_array(16)
    address = arr.__array_interface__["data"][0]
    assert _memory.table.find(address) is not None
    ok(rt.cudaDeviceReset())
    assert _memory.table.find(address) is None


TWO_CMG_PROGRAM = """
import threading
import streamq
from streamq.cuda_facade import runtime as rt
E = rt.cudaError_t
def ok(r):
    assert r[0] == E.cudaSuccess, r
    return r[1] if len(r) == 2 else r[1:]
assert ok(rt.cudaGetDeviceCount()) == 2
where = {}
def note(tag):
    return lambda _: where.__setitem__(tag, streamq.current_cmg().index)
s0 = ok(rt.cudaStreamCreate())
ok(rt.cudaSetDevice(1))
s1 = ok(rt.cudaStreamCreate())
assert ok(rt.cudaStreamGetDevice(s1)) == 1
ok(rt.cudaLaunchHostFunc(s1, note("s1"), None))
ok(rt.cudaLaunchHostFunc(0, note("legacy1"), None))   # the current device's legacy stream
ok(rt.cudaSetDevice(0))
ok(rt.cudaLaunchHostFunc(s0, note("s0"), None))
for d in (0, 1):
    ok(rt.cudaSetDevice(d)); ok(rt.cudaDeviceSynchronize())
assert where == {"s1": 1, "legacy1": 1, "s0": 0}, where
# An event of device 1 cannot be recorded in a stream of device 0, but any stream may wait on it.
ok(rt.cudaSetDevice(1)); ev1 = ok(rt.cudaEventCreate()); ok(rt.cudaSetDevice(0))
assert rt.cudaEventRecord(ev1, s0) == (E.cudaErrorInvalidResourceHandle,)
gate = threading.Event(); log = []
ok(rt.cudaLaunchHostFunc(s1, lambda _: gate.wait(10), None))
ok(rt.cudaEventRecord(ev1, s1))
ok(rt.cudaStreamWaitEvent(s0, ev1, 0))
ok(rt.cudaLaunchHostFunc(s0, lambda _: log.append("s0 after s1"), None))
import time; time.sleep(0.05); assert log == []
gate.set(); ok(rt.cudaStreamSynchronize(s0)); assert log == ["s0 after s1"]
# A fault on device 1 is sticky there only.
ok(rt.cudaLaunchHostFunc(s1, lambda _: 1 / 0, None))
ok(rt.cudaSetDevice(1))
assert rt.cudaDeviceSynchronize() == (E.cudaErrorLaunchFailure,)
ok(rt.cudaSetDevice(0))
ok(rt.cudaDeviceSynchronize())
ok(rt.cudaStreamSynchronize(s0))
props = [ok(rt.cudaGetDeviceProperties(d)) for d in (0, 1)]
assert [p.multiProcessorCount for p in props] == [1, 1] and props[0].name != props[1].name
print("OK")
"""


def test_two_cmgs_are_two_devices(python_subprocess):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to make two CMGs")
    result = python_subprocess(TWO_CMG_PROGRAM, env={"STREAMQ_TOPOLOGY": "2x1"}, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr
