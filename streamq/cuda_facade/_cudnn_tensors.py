"""cuDNN tensor and filter descriptors, and the views they give of facade memory.

A tensor descriptor holds a data type, dimensions and strides (in elements);
``tensor_view(desc, ptr)`` is the numpy view of facade memory it describes,
range-checked against the allocation table (CUDNN_STATUS_BAD_PARAM if any
element it reaches is outside one live allocation). NHWC layouts are NCHW
views with channels-last strides, so every op sees logical NCHW order.
"""

from __future__ import annotations

import math

import numpy as np

from ._cudnn_types import CUDNN_DIM_MAX, LIB, Descriptor, cudnnDataType_t, cudnnTensorFormat_t, \
    numpy_dtype

__all__ = ["cudnnTensorDescriptor_t", "cudnnFilterDescriptor_t", "cudnnCreateTensorDescriptor",
           "cudnnDestroyTensorDescriptor", "cudnnSetTensor4dDescriptor",
           "cudnnSetTensor4dDescriptorEx", "cudnnSetTensorNdDescriptor",
           "cudnnSetTensorNdDescriptorEx", "cudnnGetTensor4dDescriptor",
           "cudnnGetTensorNdDescriptor", "cudnnGetTensorSizeInBytes",
           "cudnnCreateFilterDescriptor", "cudnnDestroyFilterDescriptor",
           "cudnnSetFilter4dDescriptor", "cudnnSetFilterNdDescriptor",
           "cudnnGetFilter4dDescriptor", "tensor_view", "filter_view", "packed_strides"]

_MAX_ELEMENTS = 2 ** 31 - 1     # cuDNN's 2 Giga-element limit per descriptor
_NCHW, _NHWC = cudnnTensorFormat_t.CUDNN_TENSOR_NCHW, cudnnTensorFormat_t.CUDNN_TENSOR_NHWC


def packed_strides(dims, fmt) -> tuple[int, ...]:
    """Element strides of a packed tensor of ``dims`` (N, C, spatial...) in layout ``fmt``."""
    if fmt == _NCHW:
        order = list(range(len(dims)))
    else:   # channels last: N, spatial..., C
        order = [0, *range(2, len(dims)), 1]
    strides = [0] * len(dims)
    step = 1
    for axis in reversed(order):
        strides[axis] = step
        step *= dims[axis]
    return tuple(strides)


class _Layout(Descriptor):
    """Data type + dimensions + strides, shared by tensor and filter descriptors."""

    def _assign(self, data_type, dims, strides) -> None:
        data_type = LIB.enum(cudnnDataType_t, data_type, "dataType")
        dims = tuple(LIB.integer(d, "dimension") for d in dims)
        if any(d <= 0 for d in dims):
            raise LIB.bad(f"dimensions must be positive, got {dims}")
        strides = tuple(LIB.integer(s, "stride") for s in strides)
        if any(s < 0 for s in strides):
            raise LIB.unsupported(f"negative strides are not supported, got {strides}")
        if math.prod(dims) > _MAX_ELEMENTS:
            raise LIB.unsupported(f"{math.prod(dims)} elements exceed the limit of 2 Giga-elements")
        self.data_type, self.dims, self.strides = data_type, dims, strides
        self.is_set = True

    def dtype(self, what: str) -> np.dtype:
        """The numpy dtype of the elements (NOT_SUPPORTED for types the facade lacks)."""
        return numpy_dtype(self.data_type, what)


class cudnnTensorDescriptor_t(_Layout):
    """A tensor descriptor: dataType, dims (N, C, ...) and strides in elements."""


class cudnnFilterDescriptor_t(_Layout):
    """A filter descriptor: dataType, format and dims (K, C, spatial...), always packed."""

    def __init__(self):
        super().__init__()
        self.format = _NCHW


def _format(value):
    fmt = LIB.enum(cudnnTensorFormat_t, value, "format")
    if fmt == cudnnTensorFormat_t.CUDNN_TENSOR_NCHW_VECT_C:
        raise LIB.unsupported("CUDNN_TENSOR_NCHW_VECT_C (vectorized int8 layouts) is not supported")
    return fmt


def _dim_list(nbDims, values, what: str, minimum: int) -> list:
    nb = LIB.integer(nbDims, "nbDims")
    if not minimum <= nb <= CUDNN_DIM_MAX:
        raise LIB.unsupported(f"nbDims must be in [{minimum}, {CUDNN_DIM_MAX}], got {nb}")
    try:
        values = list(values)
    except TypeError:
        raise LIB.bad(f"{what} must be a sequence of {nb} integers, got {values!r}") from None
    if len(values) < nb:
        raise LIB.bad(f"{what} holds {len(values)} values but nbDims is {nb}")
    return values[:nb]


# -- tensor descriptors -------------------------------------------------------------------------

@LIB.api(1)
def cudnnCreateTensorDescriptor():
    """``(status, descriptor)``: a new, unset tensor descriptor."""
    return cudnnTensorDescriptor_t()


@LIB.api()
def cudnnDestroyTensorDescriptor(tensorDesc):
    """Destroy a tensor descriptor (None is a no-op; destroying twice is BAD_PARAM)."""
    if tensorDesc is not None:
        cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc", must_be_set=False).destroyed = True


@LIB.api()
def cudnnSetTensor4dDescriptor(tensorDesc, format, dataType, n, c, h, w):  # noqa: A002
    """Describe a packed 4-D tensor in layout NCHW or NHWC. Non-positive sizes or bad
    enums: BAD_PARAM; NCHW_VECT_C or more than 2**31-1 elements: NOT_SUPPORTED."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc", must_be_set=False)
    fmt = _format(format)
    dims = (n, c, h, w)
    desc._assign(dataType, dims, packed_strides(tuple(LIB.integer(d, "dimension") for d in dims), fmt))


@LIB.api()
def cudnnSetTensor4dDescriptorEx(tensorDesc, dataType, n, c, h, w, nStride, cStride, hStride,
                                 wStride):
    """Describe a 4-D tensor with explicit strides (elements; >= 0)."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc", must_be_set=False)
    desc._assign(dataType, (n, c, h, w), (nStride, cStride, hStride, wStride))


@LIB.api()
def cudnnSetTensorNdDescriptor(tensorDesc, dataType, nbDims, dimA, strideA):
    """Describe an nbDims-D tensor (3 <= nbDims <= 8) with explicit strides."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc", must_be_set=False)
    dims = _dim_list(nbDims, dimA, "dimA", 3)
    desc._assign(dataType, dims, _dim_list(nbDims, strideA, "strideA", 3))


@LIB.api()
def cudnnSetTensorNdDescriptorEx(tensorDesc, format, dataType, nbDims, dimA):  # noqa: A002
    """Describe a packed nbDims-D tensor (4 <= nbDims <= 8) in layout NCHW or NHWC."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc", must_be_set=False)
    fmt = _format(format)
    dims = tuple(LIB.integer(d, "dimA") for d in _dim_list(nbDims, dimA, "dimA", 4))
    desc._assign(dataType, dims, packed_strides(dims, fmt))


@LIB.api(9)
def cudnnGetTensor4dDescriptor(tensorDesc):
    """``(status, dataType, n, c, h, w, nStride, cStride, hStride, wStride)``; BAD_PARAM
    for a descriptor that is not 4-D."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc")
    if len(desc.dims) != 4:
        raise LIB.bad(f"tensorDesc has {len(desc.dims)} dimensions, not 4")
    return (desc.data_type, *desc.dims, *desc.strides)


@LIB.api(4)
def cudnnGetTensorNdDescriptor(tensorDesc, nbDimsRequested):
    """``(status, dataType, nbDims, dimA, strideA)``, at most nbDimsRequested of each list."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc")
    want = LIB.integer(nbDimsRequested, "nbDimsRequested", 0)
    return desc.data_type, len(desc.dims), list(desc.dims[:want]), list(desc.strides[:want])


@LIB.api(1)
def cudnnGetTensorSizeInBytes(tensorDesc):
    """``(status, bytes)`` a buffer needs to hold the tensor with its strides."""
    desc = cudnnTensorDescriptor_t.live(tensorDesc, "tensorDesc")
    span = sum((d - 1) * s for d, s in zip(desc.dims, desc.strides)) + 1
    return span * desc.dtype("tensorDesc").itemsize


# -- filter descriptors ---------------------------------------------------------------------------

@LIB.api(1)
def cudnnCreateFilterDescriptor():
    """``(status, descriptor)``: a new, unset filter descriptor."""
    return cudnnFilterDescriptor_t()


@LIB.api()
def cudnnDestroyFilterDescriptor(filterDesc):
    """Destroy a filter descriptor (None is a no-op; destroying twice is BAD_PARAM)."""
    if filterDesc is not None:
        cudnnFilterDescriptor_t.live(filterDesc, "filterDesc", must_be_set=False).destroyed = True


@LIB.api()
def cudnnSetFilter4dDescriptor(filterDesc, dataType, format, k, c, h, w):  # noqa: A002
    """Describe a packed K x C x H x W filter; ``format`` NCHW (KCRS) or NHWC (KRSC).
    Note the C argument order: dataType before format."""
    desc = cudnnFilterDescriptor_t.live(filterDesc, "filterDesc", must_be_set=False)
    fmt = _format(format)
    dims = tuple(LIB.integer(d, "dimension") for d in (k, c, h, w))
    desc._assign(dataType, dims, packed_strides(dims, fmt))
    desc.format = fmt


@LIB.api()
def cudnnSetFilterNdDescriptor(filterDesc, dataType, format, nbDims, filterDimA):  # noqa: A002
    """Describe a packed nbDims-D filter (3 <= nbDims <= 8) in layout NCHW or NHWC."""
    desc = cudnnFilterDescriptor_t.live(filterDesc, "filterDesc", must_be_set=False)
    fmt = _format(format)
    dims = tuple(LIB.integer(d, "filterDimA") for d in _dim_list(nbDims, filterDimA, "filterDimA", 3))
    desc._assign(dataType, dims, packed_strides(dims, fmt))
    desc.format = fmt


@LIB.api(6)
def cudnnGetFilter4dDescriptor(filterDesc):
    """``(status, dataType, format, k, c, h, w)``; BAD_PARAM if the filter is not 4-D."""
    desc = cudnnFilterDescriptor_t.live(filterDesc, "filterDesc")
    if len(desc.dims) != 4:
        raise LIB.bad(f"filterDesc has {len(desc.dims)} dimensions, not 4")
    return (desc.data_type, desc.format, *desc.dims)


# -- views ----------------------------------------------------------------------------------------

def tensor_view(desc, ptr, what: str) -> np.ndarray:
    """The view of facade memory at ``ptr`` that tensor descriptor ``desc`` describes."""
    d = cudnnTensorDescriptor_t.live(desc, f"{what}Desc")
    return LIB.view(ptr, d.dtype(f"{what}Desc"), d.dims, d.strides, what=what)


def filter_view(desc, ptr, what: str) -> np.ndarray:
    """The (K, C, spatial...) view of facade memory at ``ptr`` that filter ``desc`` describes."""
    d = cudnnFilterDescriptor_t.live(desc, f"{what}Desc")
    return LIB.view(ptr, d.dtype(f"{what}Desc"), d.dims, d.strides, what=what)
