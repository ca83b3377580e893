"""Types, enums and constants of the runtime API, under cuda-python's names and values.

Handles are small objects whose ``int()`` is an opaque value, as cuda-python's
(``cudaStream_t``, ``cudaEvent_t``, ``cudaGraph_t``, ...); the API accepts them or
their int values. Enum values are CUDA 12's.
"""

from __future__ import annotations

import ctypes
import enum

from ._context import IntHandle, cudaStream_t

__all__ = [
    "cudaStream_t", "cudaEvent_t", "cudaGraph_t", "cudaGraphExec_t", "cudaGraphNode_t",
    "cudaHostFn_t", "cudaStreamCallback_t", "dim3", "cudaDeviceProp", "cudaUUID_t",
    "cudaDeviceAttr", "cudaStreamCaptureMode", "cudaStreamCaptureStatus", "cudaGraphInstantiateFlags",
    "cudaComputeMode",
    "cudaStreamDefault", "cudaStreamNonBlocking", "cudaStreamLegacy", "cudaStreamPerThread",
    "cudaEventDefault", "cudaEventBlockingSync", "cudaEventDisableTiming", "cudaEventInterprocess",
    "cudaEventRecordDefault", "cudaEventRecordExternal", "cudaEventWaitDefault", "cudaEventWaitExternal",
    "CUDART_VERSION",
]

#: The runtime API version this facade mirrors (cudaRuntimeGetVersion): CUDA 12.9.
CUDART_VERSION = 12090

# Stream flags and special stream handles (cuda-python exposes them as ints).
cudaStreamDefault = 0
cudaStreamNonBlocking = 1
cudaStreamLegacy = 1
cudaStreamPerThread = 2

# Event creation, record and wait flags.
cudaEventDefault = 0
cudaEventBlockingSync = 1
cudaEventDisableTiming = 2
cudaEventInterprocess = 4
cudaEventRecordDefault = 0
cudaEventRecordExternal = 1
cudaEventWaitDefault = 0
cudaEventWaitExternal = 1


class _Handle(IntHandle):
    """An opaque handle: ``int(handle)`` is its value, 0 is NULL."""

    __slots__ = ()

    # Unlike IntHandle (stream and pool handles), equal only to ints and to handles of the
    # same type: an event never equals a graph that happens to have the same value.
    def __eq__(self, other) -> bool:
        if type(other) is type(self):
            return self._value == other._value
        if isinstance(other, int):
            return self._value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._kind, self._value))


class cudaEvent_t(_Handle):
    """An event handle (cudaEventCreate)."""

    __slots__ = ()
    _kind = "cudaEvent_t"


class cudaGraph_t(_Handle):
    """A graph handle (cudaStreamEndCapture)."""

    __slots__ = ()
    _kind = "cudaGraph_t"


class cudaGraphExec_t(_Handle):
    """An executable graph handle (cudaGraphInstantiate)."""

    __slots__ = ()
    _kind = "cudaGraphExec_t"


class cudaGraphNode_t(_Handle):
    """A graph node handle (cudaGraphGetNodes, cudaStreamGetCaptureInfo)."""

    __slots__ = ()
    _kind = "cudaGraphNode_t"


class _FunctionPointer:
    """A C function pointer as cuda-python wraps it, or (facade extension) a Python callable.

    ``init_value``: the function's address, or a Python callable; ``_ptr``: the
    address of a pointer-sized slot holding the function's address (what
    ``ctypes.addressof(CFUNCTYPE(...)(f))`` gives), read when the pointer is used.
    """

    __slots__ = ("_value", "_ptr", "pyfunc")
    _kind = "function"

    def __init__(self, init_value=0, _ptr: int = 0):
        self.pyfunc = None
        if callable(init_value) and not isinstance(init_value, int):
            self.pyfunc = init_value
            init_value = 0
        self._value = int(init_value)
        self._ptr = int(_ptr)

    def __int__(self) -> int:
        if self._ptr:
            return ctypes.c_void_p.from_address(self._ptr).value or 0
        return self._value

    __index__ = __int__

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        """The address of the slot holding the function pointer (0 for a Python callable)."""
        return self._ptr

    def __repr__(self) -> str:
        if self.pyfunc is not None:
            return f"<{self._kind} {self.pyfunc!r}>"
        return f"<{self._kind} {int(self):#x}>"


class cudaHostFn_t(_FunctionPointer):
    """``void (*)(void *userData)``: a host function for cudaLaunchHostFunc."""

    __slots__ = ()
    _kind = "cudaHostFn_t"


class cudaStreamCallback_t(_FunctionPointer):
    """``void (*)(cudaStream_t, cudaError_t, void *userData)``: a cudaStreamAddCallback callback."""

    __slots__ = ()
    _kind = "cudaStreamCallback_t"


class dim3:
    """Grid or block dimensions: ``x``, ``y``, ``z`` (each 1 unless given)."""

    __slots__ = ("x", "y", "z")

    def __init__(self, x: int = 1, y: int = 1, z: int = 1):
        self.x, self.y, self.z = x, y, z

    def __iter__(self):
        return iter((self.x, self.y, self.z))

    def __repr__(self) -> str:
        return f"dim3({self.x}, {self.y}, {self.z})"


class cudaUUID_t:
    """A device's 16-byte identifier (``bytes``)."""

    __slots__ = ("bytes",)

    def __init__(self, value: bytes = b"\0" * 16):
        self.bytes = bytes(value)

    def __repr__(self) -> str:
        return f"cudaUUID_t({self.bytes.hex()})"


class cudaDeviceProp:
    """Properties of a device (cudaGetDeviceProperties): cuda-python's field names.

    Every field starts at 0 (or an empty value); the runtime fills in what a CMG has.
    """

    _FIELDS = (
        "ECCEnabled", "accessPolicyMaxWindowSize", "asyncEngineCount", "canMapHostMemory",
        "canUseHostPointerForRegisteredMem", "clockRate", "clusterLaunch", "computeMode",
        "computePreemptionSupported", "concurrentKernels", "concurrentManagedAccess", "cooperativeLaunch",
        "cooperativeMultiDeviceLaunch", "deferredMappingCudaArraySupported", "deviceOverlap",
        "directManagedMemAccessFromHost", "globalL1CacheSupported", "gpuDirectRDMAFlushWritesOptions",
        "gpuDirectRDMASupported", "gpuDirectRDMAWritesOrdering", "hostNativeAtomicSupported",
        "hostRegisterReadOnlySupported", "hostRegisterSupported", "integrated", "ipcEventSupported",
        "isMultiGpuBoard", "kernelExecTimeoutEnabled", "l2CacheSize", "localL1CacheSupported",
        "luidDeviceNodeMask", "major", "managedMemory", "maxBlocksPerMultiProcessor", "maxSurface1D",
        "maxSurfaceCubemap", "maxTexture1D", "maxTexture1DLinear", "maxTexture1DMipmap",
        "maxTextureCubemap", "maxThreadsPerBlock", "maxThreadsPerMultiProcessor", "memPitch",
        "memoryBusWidth", "memoryClockRate", "memoryPoolSupportedHandleTypes", "memoryPoolsSupported",
        "minor", "multiGpuBoardGroupID", "multiProcessorCount", "pageableMemoryAccess",
        "pageableMemoryAccessUsesHostPageTables", "pciBusID", "pciDeviceID", "pciDomainID",
        "persistingL2CacheMaxSize", "regsPerBlock", "regsPerMultiprocessor", "reservedSharedMemPerBlock",
        "sharedMemPerBlock", "sharedMemPerBlockOptin", "sharedMemPerMultiprocessor",
        "singleToDoublePrecisionPerfRatio", "sparseCudaArraySupported", "streamPrioritiesSupported",
        "surfaceAlignment", "tccDriver", "textureAlignment", "texturePitchAlignment",
        "timelineSemaphoreInteropSupported", "totalConstMem", "totalGlobalMem", "unifiedAddressing",
        "unifiedFunctionPointers", "warpSize",
    )
    _ARRAYS = {"maxThreadsDim": 3, "maxGridSize": 3, "maxSurface1DLayered": 2, "maxSurface2D": 2,
               "maxSurface2DLayered": 3, "maxSurface3D": 3, "maxSurfaceCubemapLayered": 2,
               "maxTexture1DLayered": 2, "maxTexture2D": 2, "maxTexture2DGather": 2,
               "maxTexture2DLayered": 3, "maxTexture2DLinear": 3, "maxTexture2DMipmap": 2,
               "maxTexture3D": 3, "maxTexture3DAlt": 3, "maxTextureCubemapLayered": 2}

    def __init__(self):
        for name in self._FIELDS:
            setattr(self, name, 0)
        for name, n in self._ARRAYS.items():
            setattr(self, name, [0] * n)
        self.name = b""
        self.uuid = cudaUUID_t()
        self.luid = b"\0" * 8
        self.reserved = []

    def __repr__(self) -> str:
        return (f"<cudaDeviceProp {self.name.decode(errors='replace')!r} "
                f"SMs={self.multiProcessorCount} mem={self.totalGlobalMem}>")


class cudaStreamCaptureMode(enum.IntEnum):
    """How a capture sequence restricts potentially unsafe API calls."""

    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    """A stream's capture status (cudaStreamIsCapturing)."""

    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


class cudaGraphInstantiateFlags(enum.IntEnum):
    """Flags of cudaGraphInstantiate."""

    cudaGraphInstantiateFlagAutoFreeOnLaunch = 1
    cudaGraphInstantiateFlagUpload = 2
    cudaGraphInstantiateFlagDeviceLaunch = 4
    cudaGraphInstantiateFlagUseNodePriority = 8


class cudaComputeMode(enum.IntEnum):
    """A device's compute mode (always Default here)."""

    cudaComputeModeDefault = 0
    cudaComputeModeExclusive = 1
    cudaComputeModeProhibited = 2
    cudaComputeModeExclusiveProcess = 3


class cudaDeviceAttr(enum.IntEnum):
    """Device attributes for cudaDeviceGetAttribute (CUDA 12's values)."""

    cudaDevAttrMaxThreadsPerBlock = 1
    cudaDevAttrMaxBlockDimX = 2
    cudaDevAttrMaxBlockDimY = 3
    cudaDevAttrMaxBlockDimZ = 4
    cudaDevAttrMaxGridDimX = 5
    cudaDevAttrMaxGridDimY = 6
    cudaDevAttrMaxGridDimZ = 7
    cudaDevAttrMaxSharedMemoryPerBlock = 8
    cudaDevAttrTotalConstantMemory = 9
    cudaDevAttrWarpSize = 10
    cudaDevAttrMaxPitch = 11
    cudaDevAttrMaxRegistersPerBlock = 12
    cudaDevAttrClockRate = 13
    cudaDevAttrTextureAlignment = 14
    cudaDevAttrGpuOverlap = 15
    cudaDevAttrMultiProcessorCount = 16
    cudaDevAttrKernelExecTimeout = 17
    cudaDevAttrIntegrated = 18
    cudaDevAttrCanMapHostMemory = 19
    cudaDevAttrComputeMode = 20
    cudaDevAttrMaxTexture1DWidth = 21
    cudaDevAttrMaxTexture2DWidth = 22
    cudaDevAttrMaxTexture2DHeight = 23
    cudaDevAttrMaxTexture3DWidth = 24
    cudaDevAttrMaxTexture3DHeight = 25
    cudaDevAttrMaxTexture3DDepth = 26
    cudaDevAttrMaxTexture2DLayeredWidth = 27
    cudaDevAttrMaxTexture2DLayeredHeight = 28
    cudaDevAttrMaxTexture2DLayeredLayers = 29
    cudaDevAttrSurfaceAlignment = 30
    cudaDevAttrConcurrentKernels = 31
    cudaDevAttrEccEnabled = 32
    cudaDevAttrPciBusId = 33
    cudaDevAttrPciDeviceId = 34
    cudaDevAttrTccDriver = 35
    cudaDevAttrMemoryClockRate = 36
    cudaDevAttrGlobalMemoryBusWidth = 37
    cudaDevAttrL2CacheSize = 38
    cudaDevAttrMaxThreadsPerMultiProcessor = 39
    cudaDevAttrAsyncEngineCount = 40
    cudaDevAttrUnifiedAddressing = 41
    cudaDevAttrMaxTexture1DLayeredWidth = 42
    cudaDevAttrMaxTexture1DLayeredLayers = 43
    cudaDevAttrMaxTexture2DGatherWidth = 45
    cudaDevAttrMaxTexture2DGatherHeight = 46
    cudaDevAttrMaxTexture3DWidthAlt = 47
    cudaDevAttrMaxTexture3DHeightAlt = 48
    cudaDevAttrMaxTexture3DDepthAlt = 49
    cudaDevAttrPciDomainId = 50
    cudaDevAttrTexturePitchAlignment = 51
    cudaDevAttrMaxTextureCubemapWidth = 52
    cudaDevAttrMaxTextureCubemapLayeredWidth = 53
    cudaDevAttrMaxTextureCubemapLayeredLayers = 54
    cudaDevAttrMaxSurface1DWidth = 55
    cudaDevAttrMaxSurface2DWidth = 56
    cudaDevAttrMaxSurface2DHeight = 57
    cudaDevAttrMaxSurface3DWidth = 58
    cudaDevAttrMaxSurface3DHeight = 59
    cudaDevAttrMaxSurface3DDepth = 60
    cudaDevAttrMaxSurface1DLayeredWidth = 61
    cudaDevAttrMaxSurface1DLayeredLayers = 62
    cudaDevAttrMaxSurface2DLayeredWidth = 63
    cudaDevAttrMaxSurface2DLayeredHeight = 64
    cudaDevAttrMaxSurface2DLayeredLayers = 65
    cudaDevAttrMaxSurfaceCubemapWidth = 66
    cudaDevAttrMaxSurfaceCubemapLayeredWidth = 67
    cudaDevAttrMaxSurfaceCubemapLayeredLayers = 68
    cudaDevAttrMaxTexture1DLinearWidth = 69
    cudaDevAttrMaxTexture2DLinearWidth = 70
    cudaDevAttrMaxTexture2DLinearHeight = 71
    cudaDevAttrMaxTexture2DLinearPitch = 72
    cudaDevAttrMaxTexture2DMipmappedWidth = 73
    cudaDevAttrMaxTexture2DMipmappedHeight = 74
    cudaDevAttrComputeCapabilityMajor = 75
    cudaDevAttrComputeCapabilityMinor = 76
    cudaDevAttrMaxTexture1DMipmappedWidth = 77
    cudaDevAttrStreamPrioritiesSupported = 78
    cudaDevAttrGlobalL1CacheSupported = 79
    cudaDevAttrLocalL1CacheSupported = 80
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81
    cudaDevAttrMaxRegistersPerMultiprocessor = 82
    cudaDevAttrManagedMemory = 83
    cudaDevAttrIsMultiGpuBoard = 84
    cudaDevAttrMultiGpuBoardGroupID = 85
    cudaDevAttrHostNativeAtomicSupported = 86
    cudaDevAttrSingleToDoublePrecisionPerfRatio = 87
    cudaDevAttrPageableMemoryAccess = 88
    cudaDevAttrConcurrentManagedAccess = 89
    cudaDevAttrComputePreemptionSupported = 90
    cudaDevAttrCanUseHostPointerForRegisteredMem = 91
    cudaDevAttrCooperativeLaunch = 95
    cudaDevAttrCooperativeMultiDeviceLaunch = 96
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
    cudaDevAttrCanFlushRemoteWrites = 98
    cudaDevAttrHostRegisterSupported = 99
    cudaDevAttrPageableMemoryAccessUsesHostPageTables = 100
    cudaDevAttrDirectManagedMemAccessFromHost = 101
    cudaDevAttrMaxBlocksPerMultiprocessor = 106
    cudaDevAttrMaxPersistingL2CacheSize = 108
    cudaDevAttrMaxAccessPolicyWindowSize = 109
    cudaDevAttrReservedSharedMemoryPerBlock = 111
    cudaDevAttrSparseCudaArraySupported = 112
    cudaDevAttrHostRegisterReadOnlySupported = 113
    cudaDevAttrTimelineSemaphoreInteropSupported = 114
    cudaDevAttrMemoryPoolsSupported = 115
    cudaDevAttrGPUDirectRDMASupported = 116
    cudaDevAttrGPUDirectRDMAFlushWritesOptions = 117
    cudaDevAttrGPUDirectRDMAWritesOrdering = 118
    cudaDevAttrMemoryPoolSupportedHandleTypes = 119
    cudaDevAttrClusterLaunch = 120
    cudaDevAttrDeferredMappingCudaArraySupported = 121
    cudaDevAttrIpcEventSupport = 125
    cudaDevAttrMemSyncDomainCount = 126
    cudaDevAttrNumaConfig = 130
    cudaDevAttrNumaId = 131
    cudaDevAttrMpsEnabled = 133
    cudaDevAttrHostNumaId = 134
    cudaDevAttrGpuPciDeviceId = 139
    cudaDevAttrGpuPciSubsystemId = 140
    cudaDevAttrHostNumaMemoryPoolsSupported = 142
    cudaDevAttrHostNumaMultinodeIpcSupported = 143
