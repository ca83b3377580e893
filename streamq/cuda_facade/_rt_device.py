"""Device management: devices are CMGs (cudaGetDeviceCount, cudaSetDevice, properties, reset).

What a CMG reports as a CUDA device: ``name`` says which CMG (CPUs, NUMA node),
``multiProcessorCount`` its cores, ``totalGlobalMem`` its NUMA node's memory
(the machine's when the node is unknown), ``l2CacheSize`` its CPUs' L2,
``clockRate`` the CPU clock. Limits that kernels are checked against (threads
per block, grid size, shared memory) are CUDA's usual ones, so launch
configurations valid on a GPU are valid here. ``integrated``,
``pageableMemoryAccess`` and ``concurrentManagedAccess`` are 1: the "device" is
the host's own CPUs and memory.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import time

from streamq import trace

from . import _context, _graphs, _memory
from ._errors import STICKY, CudaError, api, cudaError_t, last_error, peek_last_error
from ._rt_types import CUDART_VERSION, cudaDeviceAttr, cudaDeviceProp, cudaUUID_t

__all__ = ["cudaGetDeviceCount", "cudaSetDevice", "cudaGetDevice", "cudaGetDeviceProperties",
           "cudaDeviceGetAttribute", "cudaDeviceSynchronize", "cudaDeviceReset",
           "cudaDeviceGetStreamPriorityRange", "cudaRuntimeGetVersion", "cudaDriverGetVersion",
           "MAX_THREADS_PER_BLOCK", "MAX_BLOCK_DIM", "MAX_GRID_DIM", "SHARED_MEM_PER_BLOCK"]

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
SHARED_MEM_PER_BLOCK = 48 * 1024


def _device_index(device) -> int:
    if isinstance(device, bool):
        raise CudaError(cudaError_t.cudaErrorInvalidDevice, f"device must be an int, got {device!r}")
    try:
        return operator.index(device)
    except TypeError:
        raise CudaError(cudaError_t.cudaErrorInvalidDevice, f"device must be an int, got {device!r}") from None


def _sysfs_int(path: str, scale: int = 1) -> int:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return 0
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) * scale if text.isdigit() else 0


def _node_memory(node: int | None) -> int:
    """Bytes of memory of NUMA node ``node`` (the machine's if unknown)."""
    if node is not None:
        try:
            with open(f"/sys/devices/system/node/node{node}/meminfo") as f:
                for line in f:
                    if "MemTotal:" in line:
                        return int(line.split()[-2]) * 1024
        except (OSError, ValueError):
            pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _cache_size(cpu: int, level: int) -> int:
    base = f"/sys/devices/system/cpu/cpu{cpu}/cache"
    for index in range(8):
        if _sysfs_int(f"{base}/index{index}/level") == level:
            kind = ""
            try:
                with open(f"{base}/index{index}/type") as f:
                    kind = f.read().strip()
            except OSError:
                pass
            if kind in ("Unified", "Data"):
                return _sysfs_int(f"{base}/index{index}/size")
    return 0


def _clock_khz(cpu: int) -> int:
    khz = _sysfs_int(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
    if khz:
        return khz
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return 0


@functools.lru_cache(maxsize=None)
def _properties(index: int) -> cudaDeviceProp:
    cmg = _context.device(index).cmg
    first = cmg.cpus[0]
    node = cmg.numa_node
    p = cudaDeviceProp()
    p.name = (f"streamq CMG {index} (CPUs {','.join(map(str, cmg.cpus))}, "
              f"NUMA node {'?' if node is None else node})").encode()[:255]
    p.uuid = cudaUUID_t(hashlib.md5(f"streamq-cmg-{index}-{cmg.cpus}".encode()).digest())
    p.totalGlobalMem = _node_memory(node)
    p.multiProcessorCount = cmg.ncores
    p.l2CacheSize = _cache_size(first, 2)
    p.persistingL2CacheMaxSize = 0
    p.clockRate = _clock_khz(first)
    p.major, p.minor = 8, 0
    p.warpSize = 32
    p.maxThreadsPerBlock = MAX_THREADS_PER_BLOCK
    p.maxThreadsDim = list(MAX_BLOCK_DIM)
    p.maxGridSize = list(MAX_GRID_DIM)
    p.maxThreadsPerMultiProcessor = 2048
    p.maxBlocksPerMultiProcessor = 32
    p.sharedMemPerBlock = SHARED_MEM_PER_BLOCK
    p.sharedMemPerBlockOptin = SHARED_MEM_PER_BLOCK
    p.sharedMemPerMultiprocessor = _cache_size(first, 1) or SHARED_MEM_PER_BLOCK
    p.regsPerBlock = p.regsPerMultiprocessor = 65536
    p.totalConstMem = 64 * 1024
    p.memPitch = 2**31 - 1
    p.textureAlignment = 512
    p.texturePitchAlignment = 32
    p.surfaceAlignment = 512
    p.deviceOverlap = 1
    p.asyncEngineCount = 1
    p.concurrentKernels = 1
    p.integrated = 1
    p.canMapHostMemory = 1
    p.unifiedAddressing = 1
    p.managedMemory = 1
    p.concurrentManagedAccess = 1
    p.pageableMemoryAccess = 1
    p.pageableMemoryAccessUsesHostPageTables = 1
    p.directManagedMemAccessFromHost = 1
    p.canUseHostPointerForRegisteredMem = 1
    p.hostRegisterSupported = 1
    p.hostNativeAtomicSupported = 1
    p.streamPrioritiesSupported = 1
    p.memoryPoolsSupported = 1
    p.globalL1CacheSupported = p.localL1CacheSupported = 1
    p.computePreemptionSupported = 1
    p.singleToDoublePrecisionPerfRatio = 2
    p.pciDeviceID = index
    p.computeMode = 0
    return p


# Attributes that read a property field directly.
_ATTR_FIELDS = {
    cudaDeviceAttr.cudaDevAttrMaxThreadsPerBlock: "maxThreadsPerBlock",
    cudaDeviceAttr.cudaDevAttrMaxSharedMemoryPerBlock: "sharedMemPerBlock",
    cudaDeviceAttr.cudaDevAttrTotalConstantMemory: "totalConstMem",
    cudaDeviceAttr.cudaDevAttrWarpSize: "warpSize",
    cudaDeviceAttr.cudaDevAttrMaxPitch: "memPitch",
    cudaDeviceAttr.cudaDevAttrMaxRegistersPerBlock: "regsPerBlock",
    cudaDeviceAttr.cudaDevAttrClockRate: "clockRate",
    cudaDeviceAttr.cudaDevAttrTextureAlignment: "textureAlignment",
    cudaDeviceAttr.cudaDevAttrGpuOverlap: "deviceOverlap",
    cudaDeviceAttr.cudaDevAttrMultiProcessorCount: "multiProcessorCount",
    cudaDeviceAttr.cudaDevAttrKernelExecTimeout: "kernelExecTimeoutEnabled",
    cudaDeviceAttr.cudaDevAttrIntegrated: "integrated",
    cudaDeviceAttr.cudaDevAttrCanMapHostMemory: "canMapHostMemory",
    cudaDeviceAttr.cudaDevAttrComputeMode: "computeMode",
    cudaDeviceAttr.cudaDevAttrSurfaceAlignment: "surfaceAlignment",
    cudaDeviceAttr.cudaDevAttrConcurrentKernels: "concurrentKernels",
    cudaDeviceAttr.cudaDevAttrEccEnabled: "ECCEnabled",
    cudaDeviceAttr.cudaDevAttrPciBusId: "pciBusID",
    cudaDeviceAttr.cudaDevAttrPciDeviceId: "pciDeviceID",
    cudaDeviceAttr.cudaDevAttrPciDomainId: "pciDomainID",
    cudaDeviceAttr.cudaDevAttrTccDriver: "tccDriver",
    cudaDeviceAttr.cudaDevAttrMemoryClockRate: "memoryClockRate",
    cudaDeviceAttr.cudaDevAttrGlobalMemoryBusWidth: "memoryBusWidth",
    cudaDeviceAttr.cudaDevAttrL2CacheSize: "l2CacheSize",
    cudaDeviceAttr.cudaDevAttrMaxThreadsPerMultiProcessor: "maxThreadsPerMultiProcessor",
    cudaDeviceAttr.cudaDevAttrAsyncEngineCount: "asyncEngineCount",
    cudaDeviceAttr.cudaDevAttrUnifiedAddressing: "unifiedAddressing",
    cudaDeviceAttr.cudaDevAttrTexturePitchAlignment: "texturePitchAlignment",
    cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor: "major",
    cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor: "minor",
    cudaDeviceAttr.cudaDevAttrStreamPrioritiesSupported: "streamPrioritiesSupported",
    cudaDeviceAttr.cudaDevAttrGlobalL1CacheSupported: "globalL1CacheSupported",
    cudaDeviceAttr.cudaDevAttrLocalL1CacheSupported: "localL1CacheSupported",
    cudaDeviceAttr.cudaDevAttrMaxSharedMemoryPerMultiprocessor: "sharedMemPerMultiprocessor",
    cudaDeviceAttr.cudaDevAttrMaxRegistersPerMultiprocessor: "regsPerMultiprocessor",
    cudaDeviceAttr.cudaDevAttrManagedMemory: "managedMemory",
    cudaDeviceAttr.cudaDevAttrIsMultiGpuBoard: "isMultiGpuBoard",
    cudaDeviceAttr.cudaDevAttrMultiGpuBoardGroupID: "multiGpuBoardGroupID",
    cudaDeviceAttr.cudaDevAttrHostNativeAtomicSupported: "hostNativeAtomicSupported",
    cudaDeviceAttr.cudaDevAttrSingleToDoublePrecisionPerfRatio: "singleToDoublePrecisionPerfRatio",
    cudaDeviceAttr.cudaDevAttrPageableMemoryAccess: "pageableMemoryAccess",
    cudaDeviceAttr.cudaDevAttrConcurrentManagedAccess: "concurrentManagedAccess",
    cudaDeviceAttr.cudaDevAttrComputePreemptionSupported: "computePreemptionSupported",
    cudaDeviceAttr.cudaDevAttrCanUseHostPointerForRegisteredMem: "canUseHostPointerForRegisteredMem",
    cudaDeviceAttr.cudaDevAttrCooperativeLaunch: "cooperativeLaunch",
    cudaDeviceAttr.cudaDevAttrCooperativeMultiDeviceLaunch: "cooperativeMultiDeviceLaunch",
    cudaDeviceAttr.cudaDevAttrMaxSharedMemoryPerBlockOptin: "sharedMemPerBlockOptin",
    cudaDeviceAttr.cudaDevAttrHostRegisterSupported: "hostRegisterSupported",
    cudaDeviceAttr.cudaDevAttrPageableMemoryAccessUsesHostPageTables: "pageableMemoryAccessUsesHostPageTables",
    cudaDeviceAttr.cudaDevAttrDirectManagedMemAccessFromHost: "directManagedMemAccessFromHost",
    cudaDeviceAttr.cudaDevAttrMaxBlocksPerMultiprocessor: "maxBlocksPerMultiProcessor",
    cudaDeviceAttr.cudaDevAttrMaxPersistingL2CacheSize: "persistingL2CacheMaxSize",
    cudaDeviceAttr.cudaDevAttrMaxAccessPolicyWindowSize: "accessPolicyMaxWindowSize",
    cudaDeviceAttr.cudaDevAttrReservedSharedMemoryPerBlock: "reservedSharedMemPerBlock",
    cudaDeviceAttr.cudaDevAttrMemoryPoolsSupported: "memoryPoolsSupported",
}


def _attribute(attr: cudaDeviceAttr, index: int) -> int:
    p = _properties(index)
    field = _ATTR_FIELDS.get(attr)
    if field is not None:
        return int(getattr(p, field))
    dims = {cudaDeviceAttr.cudaDevAttrMaxBlockDimX: p.maxThreadsDim[0],
            cudaDeviceAttr.cudaDevAttrMaxBlockDimY: p.maxThreadsDim[1],
            cudaDeviceAttr.cudaDevAttrMaxBlockDimZ: p.maxThreadsDim[2],
            cudaDeviceAttr.cudaDevAttrMaxGridDimX: p.maxGridSize[0],
            cudaDeviceAttr.cudaDevAttrMaxGridDimY: p.maxGridSize[1],
            cudaDeviceAttr.cudaDevAttrMaxGridDimZ: p.maxGridSize[2]}
    if attr in dims:
        return int(dims[attr])
    node = _context.device(index).cmg.numa_node
    if attr in (cudaDeviceAttr.cudaDevAttrNumaId, cudaDeviceAttr.cudaDevAttrHostNumaId):
        return -1 if node is None else node
    if attr == cudaDeviceAttr.cudaDevAttrNumaConfig:
        return 0 if node is None else 1  # cudaDeviceNumaConfigNumaNode: memory is a NUMA node's
    if attr == cudaDeviceAttr.cudaDevAttrMemSyncDomainCount:
        return 1
    return 0  # textures, surfaces, RDMA, IPC, MPS: not available on a CMG


def _release_memory(device: _context.Device) -> None:
    """cudaDeviceReset destroys the device's allocations (pointers to them become invalid)."""
    _memory.release_device(device.index)


_context.reset_hooks.append(_release_memory)


@api(1)
def cudaGetDeviceCount():
    """Number of devices: the CMGs of :func:`streamq.topology`."""
    return _context.device_count()


@api()
def cudaSetDevice(device):
    """Make ``device`` the calling host thread's current device (cudaErrorInvalidDevice if out of range)."""
    _context.set_current_device(_device_index(device))


@api(1)
def cudaGetDevice():
    """The calling host thread's current device (0 until cudaSetDevice)."""
    return _context.current_device().index


@api(1)
def cudaGetDeviceProperties(device):
    """A :class:`cudaDeviceProp` describing CMG ``device`` (a fresh copy per call)."""
    index = _device_index(device)
    _context.device(index)
    source = _properties(index)
    prop = cudaDeviceProp()
    for key, value in vars(source).items():
        setattr(prop, key, list(value) if isinstance(value, list) else value)
    return prop


@api(1)
def cudaDeviceGetAttribute(attr, device):
    """The integer value of device attribute ``attr`` (a :class:`cudaDeviceAttr`) on ``device``."""
    try:
        attr = cudaDeviceAttr(attr)
    except ValueError:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"attr: unknown device attribute {attr!r}") from None
    index = _device_index(device)
    _context.device(index)
    return _attribute(attr, index)


@api()
def cudaDeviceSynchronize():
    """Wait for every stream of the current device; returns the sticky error of a failed op.

    Not permitted from inside stream work (cudaErrorNotPermitted) nor while a stream of the
    device is capturing (cudaErrorStreamCaptureUnsupported; the capture is invalidated).
    """
    _context.check_host_sync("cudaDeviceSynchronize")
    dev = _context.current_device()
    _graphs.refuse_during_capture(dev, "cudaDeviceSynchronize")
    start = time.perf_counter_ns() if trace._sink is not None else 0
    dev.synchronize()
    if start:
        trace.emit({"type": "host_sync", "what": "cudaDeviceSynchronize", "device": dev.index,
                    "start_ns": start, "end_ns": time.perf_counter_ns()})
    dev.check()


@api()
def cudaDeviceReset():
    """Finish the current device's work, destroy its streams, events, graphs and device/managed
    allocations, clear its sticky error (also as the calling thread's last error); handles and
    pointers made before the reset become invalid."""
    _context.check_host_sync("cudaDeviceReset")
    _context.current_device().reset()
    if peek_last_error() in STICKY:
        last_error()  # the device's error is gone: the thread no longer reports it


@api(2)
def cudaDeviceGetStreamPriorityRange():
    """``(leastPriority, greatestPriority)``: (0, -5); lower numbers are higher priorities."""
    return _context.PRIORITY_LEAST, _context.PRIORITY_GREATEST


@api(1)
def cudaRuntimeGetVersion():
    """The CUDA runtime API version this facade mirrors (1000 * major + 10 * minor)."""
    return CUDART_VERSION


@api(1)
def cudaDriverGetVersion():
    """The CUDA version the "driver" supports: the same as :func:`cudaRuntimeGetVersion`."""
    return CUDART_VERSION

