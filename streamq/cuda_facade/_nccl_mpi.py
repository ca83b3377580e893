"""MPI for the NCCL module: loading mpi4py, datatypes and reduction ops, reserved tags.

mpi4py is an optional dependency (the ``mpi`` extra). Importing this module
without it raises an ImportError that names the missing package and the way to
install it.
"""

from __future__ import annotations

import numpy as np

from ._nccl_types import ncclDataType_t, ncclRedOp_t

try:
    from mpi4py import MPI
except ImportError as _exc:  # pragma: no cover - exercised by a test that hides mpi4py
    raise ImportError(
        "streamq.cuda_facade.nccl needs the 'mpi4py' package and an MPI library: "
        "pip install 'streamq[mpi]' (installs mpi4py and the mpich wheel), or "
        "pip install mpi4py against a system MPI") from _exc
except RuntimeError as _exc:  # pragma: no cover - mpi4py present but no MPI library it can load
    raise ImportError(f"streamq.cuda_facade.nccl: mpi4py could not load an MPI library: {_exc}") from _exc

__all__ = [
    "BOOT_TAG",
    "DATA_TAG",
    "HEADER_RECV_TAG",
    "HEADER_SEND_TAG",
    "MPI",
    "NOTICE_TAG",
    "bf16_to_f32",
    "f32_to_bf16",
    "mpi_op",
    "mpi_type",
    "needs_staging",
    "world",
]

# Tags. BOOT_TAG is used on COMM_WORLD (communicator set-up only), near the top of the
# tag range so that it does not meet an application's own tags; the others are used on
# the private MPI communicator of each NCCL communicator, which no other code sees.
_TAG_UB = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB) or 32767
BOOT_TAG = _TAG_UB - 7
NOTICE_TAG = 1
DATA_TAG = 2
HEADER_SEND_TAG = 3   # a sender's header, travelling to its receiver
HEADER_RECV_TAG = 4   # a receiver's header, travelling to its sender

_FLOAT16 = getattr(MPI, "FLOAT16_T", MPI.DATATYPE_NULL)

_TYPES = {
    ncclDataType_t.ncclInt8: MPI.INT8_T,
    ncclDataType_t.ncclUint8: MPI.UINT8_T,
    ncclDataType_t.ncclInt32: MPI.INT32_T,
    ncclDataType_t.ncclUint32: MPI.UINT32_T,
    ncclDataType_t.ncclInt64: MPI.INT64_T,
    ncclDataType_t.ncclUint64: MPI.UINT64_T,
    ncclDataType_t.ncclFloat16: _FLOAT16 if _FLOAT16 != MPI.DATATYPE_NULL else MPI.UINT16_T,
    ncclDataType_t.ncclFloat32: MPI.FLOAT,
    ncclDataType_t.ncclFloat64: MPI.DOUBLE,
    ncclDataType_t.ncclBfloat16: MPI.UINT16_T,   # moved as bits; reduced through float32
}

_OPS = {
    ncclRedOp_t.ncclSum: MPI.SUM,
    ncclRedOp_t.ncclProd: MPI.PROD,
    ncclRedOp_t.ncclMax: MPI.MAX,
    ncclRedOp_t.ncclMin: MPI.MIN,
    ncclRedOp_t.ncclAvg: MPI.SUM,   # then divided by the number of ranks
}


def world():
    """MPI's world communicator."""
    return MPI.COMM_WORLD


def mpi_type(datatype: ncclDataType_t):
    """The MPI datatype that moves elements of ``datatype`` (bfloat16: as 16-bit words)."""
    return _TYPES[datatype]


def mpi_op(op: ncclRedOp_t):
    """The MPI reduction behind ``op`` (ncclAvg: MPI.SUM, divided afterwards)."""
    return _OPS[op]


def needs_staging(datatype: ncclDataType_t, op: ncclRedOp_t) -> bool:
    """True if a reduction of ``datatype`` runs on float32 copies: bfloat16 always (MPI has
    no bfloat16 arithmetic), float16 for ncclAvg (so the sum cannot overflow before the
    division) or when this MPI has no 16-bit float type."""
    if datatype == ncclDataType_t.ncclBfloat16:
        return True
    if datatype == ncclDataType_t.ncclFloat16:
        return op == ncclRedOp_t.ncclAvg or _FLOAT16 == MPI.DATATYPE_NULL
    return False


def bf16_to_f32(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 values (their uint16 bit patterns) as float32: exact (the bits are the top half)."""
    wide = bits.astype(np.uint32) << np.uint32(16)
    if out is None:
        return wide.view(np.float32)
    out[...] = wide.view(np.float32)
    return out


def f32_to_bf16(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Round float32 ``values`` to bfloat16 (nearest, ties to even), written as bits into ``out``.

    NaNs stay quiet NaNs of the same sign; infinities and overflow to infinity follow IEEE."""
    u = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    result = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        result[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    out[...] = result
    return out
