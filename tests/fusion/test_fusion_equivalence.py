"""Fused execution gives exactly the bits of unfused execution.

The oracle is the kernel registry itself: each op run on its own with
``streamq.kernels.get(op)`` (the numba provider, with its numpy paths for
small, broadcast or strided operands). Random chains come from hypothesis:
shapes, broadcasting, strided and transposed views, float32/float64, scalars,
in-place ops, outputs aliasing inputs, special values (0, -0, inf, NaN,
subnormals). Every buffer is compared afterwards, so intermediates the caller
may read, in-place updates and untouched inputs are all checked.
"""

import os

import numpy as np
import pytest
from fusion_helpers import assert_same_bits, run_unfused, run_window
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(240)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3e38, -1.0, 1.0]


def make_values(shape, dtype, seed):
    """Normal values with special values sprinkled in (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.choice([0.5, 3.0, 40.0])
    mask = rng.random(shape) < 0.15
    x = np.where(mask, rng.choice(SPECIALS, size=shape), x)
    return np.asarray(x).astype(dtype)


def make_buffer(shape, layout, dtype, seed):
    """An array of ``shape`` with the given memory layout, filled deterministically."""
    shape = tuple(shape)
    if layout == "strided" and shape:
        base = make_values(shape[:-1] + (2 * shape[-1],), dtype, seed)
        return base[..., ::2]
    if layout == "transposed" and len(shape) >= 2:
        return make_values(shape[::-1], dtype, seed).T
    return make_values(shape, dtype, seed)


# ------------------------------------------------------------ chain strategy ---

ATEN_BINARY = ["aten::add", "aten::sub", "aten::mul", "aten::div"]
ATEN_OPS = (ATEN_BINARY + [op + "_" for op in ATEN_BINARY] +
            ["aten::relu", "aten::relu_", "aten::threshold", "aten::threshold_",
             "aten::threshold_backward", "aten::sigmoid_backward", "aten::tanh_backward"])
CUDNN_OPS = ["cudnn.activation_forward", "cudnn.add_tensor", "cudnn.op_tensor",
             "cudnn.scale_tensor"]
MODES = ["relu", "sigmoid", "tanh", "clipped_relu", "elu", "swish", "identity"]


@st.composite
def chains(draw):
    """A description of a fusable chain: dtype, buffers (shape, layout, seed) and calls.

    Calls refer to arrays symbolically: ``("buf", i)``; ``("out", k)`` is the
    array op k wrote. Each op after the first reads the previous op's output.
    """
    dtype = draw(st.sampled_from([F32, F64]))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    buffers = []

    def buffer(shp, layout=None):
        layout = layout or draw(st.sampled_from(["c", "c", "strided", "transposed"]))
        buffers.append((tuple(shp), layout, draw(st.integers(0, 2**31))))
        return ("buf", len(buffers) - 1)

    def small(same_ndim):
        """A shape that broadcasts to ``shape`` (cuDNN: same ndim, each dim 1 or equal)."""
        dims = [1 if draw(st.booleans()) else n for n in shape]
        if not same_ndim:
            dims = dims[draw(st.integers(0, len(dims))):]
        return tuple(dims)

    def scalar():
        return draw(st.sampled_from([2, -1, 0.5, 3.25, 0.0, -7.5, 1e-3]))

    def fresh_or(prev):
        return prev if draw(st.booleans()) else buffer(shape)

    calls = []
    ops = ATEN_OPS + (CUDNN_OPS if ndim else [])
    prev = buffer(shape)
    for k in range(draw(st.integers(2, 4))):
        op = draw(st.sampled_from(ops))
        kw = {}
        if op in ATEN_BINARY or op[:-1] in ATEN_BINARY:
            inplace = op.endswith("_")
            if inplace:
                self_ = prev if draw(st.booleans()) else buffer(shape)
                other = (prev if self_ != prev else
                         draw(st.sampled_from(["tensor", "scalar"])))
            else:
                prev_is_self = draw(st.booleans())
                self_ = prev if prev_is_self else buffer(small(False))
                other = draw(st.sampled_from(["tensor", "scalar"])) if prev_is_self else prev
            if other == "tensor":
                other = buffer(small(False))
            elif other == "scalar":
                other = ("scalar", scalar())
            args = (self_, other)
            if op.rstrip("_") in ("aten::add", "aten::sub"):
                kw["alpha"] = draw(st.sampled_from([1, 2, -0.5, 0.3]))
            written = self_ if inplace else fresh_or(prev)
            if not inplace:
                kw["out"] = written
        elif op in ("aten::relu", "aten::relu_", "aten::threshold", "aten::threshold_"):
            args = (prev,)
            if op.startswith("aten::threshold"):
                args += (("scalar", scalar()), ("scalar", scalar()))
            written = prev if op.endswith("_") else fresh_or(prev)
            if not op.endswith("_"):
                kw["out"] = written
        elif op in ("aten::threshold_backward", "aten::sigmoid_backward", "aten::tanh_backward"):
            partner = buffer(small(False))
            args = (prev, partner) if draw(st.booleans()) else (partner, prev)
            if op == "aten::threshold_backward":
                args += (("scalar", scalar()),)
            written = fresh_or(prev)
            kw["out"] = written
        elif op == "cudnn.activation_forward":
            mode = draw(st.sampled_from(MODES))
            kw = {"mode": mode, "coef": draw(st.sampled_from([0.0, 0.5, 6.0])),
                  "alpha": draw(st.sampled_from([1.0, -2.0])),
                  "beta": draw(st.sampled_from([0.0, 0.5]))}
            if kw["beta"] and draw(st.booleans()):
                args = (buffer(shape), prev)          # linked through y, read as beta * y
            else:
                args = (prev, fresh_or(prev))
            written = args[1]
        elif op == "cudnn.scale_tensor":
            args = (prev, ("scalar", draw(st.sampled_from([2.0, -0.25, 3.5]))))
            written = prev
        else:
            c_reads = draw(st.booleans())
            beta = draw(st.sampled_from([0.5, 1.0])) if c_reads else 0.0
            c = prev if c_reads else buffer(shape)
            other = buffer(small(True)) if c_reads else prev
            if op == "cudnn.add_tensor":
                args = (other, c)
                kw = {"alpha": draw(st.sampled_from([1.0, 0.5])), "beta": beta}
            else:
                top = draw(st.sampled_from(["add", "mul", "min", "max", "sqrt", "not"]))
                unary = top in ("sqrt", "not")
                if c_reads or unary or draw(st.booleans()):
                    a, b = other, (None if unary else buffer(small(True)))
                else:
                    a, b = buffer(small(True)), other
                args = (("scalar", top), a, b, c)
                kw = {"alpha1": draw(st.sampled_from([1.0, -1.5])),
                      "alpha2": draw(st.sampled_from([1.0, 2.0])), "beta": beta}
            written = c
        calls.append((op, args, kw))
        prev = written
    return dtype, buffers, calls


def materialize(desc):
    """Fresh arrays for a chain description, and the concrete calls."""
    dtype, buffers, calls = desc
    arrays = [make_buffer(shape, layout, dtype, seed) for shape, layout, seed in buffers]

    def resolve(ref):
        if isinstance(ref, tuple) and ref and ref[0] == "buf":
            return arrays[ref[1]]
        if isinstance(ref, tuple) and ref and ref[0] == "scalar":
            return ref[1]
        return ref

    concrete = [(op, tuple(resolve(a) for a in args), {k: resolve(v) for k, v in kw.items()})
                for op, args, kw in calls]
    return arrays, concrete


# Each example compiles a kernel (1-3 s). By default a fixed set of examples runs, so
# the on-disk kernel cache makes reruns fast; STREAMQ_FUSION_EXAMPLES=N explores N
# fresh random chains instead.
EXAMPLES = os.environ.get("STREAMQ_FUSION_EXAMPLES")


@settings(max_examples=int(EXAMPLES or 15), derandomize=EXAMPLES is None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(desc=chains())
def test_random_chains_fuse_bit_exactly(desc, auto_fusion, queue):
    expected, calls = materialize(desc)
    run_unfused(calls)
    actual, calls = materialize(desc)
    taken, tasks = run_window(queue, calls)
    assert all(taken), f"offers {taken} for {[c[0] for c in calls]}"
    assert [t.name for t in tasks] == ["fused[" + "+".join(c[0] for c in calls) + "]"]
    for a, e in zip(actual, expected):
        assert_same_bits(a, e)


def _bounds(arr):
    base = arr
    while base.base is not None:
        base = base.base
    lo = base.__array_interface__["data"][0]
    return lo, lo + base.nbytes


@settings(max_examples=int(EXAMPLES or 10), derandomize=EXAMPLES is None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(desc=chains(), freed=st.lists(st.booleans(), min_size=16, max_size=16))
def test_random_chains_with_freed_buffers_store_only_what_is_still_live(desc, freed, auto_fusion, queue):
    # A buffer freed after the chain (cudaFreeAsync on the stream) is dead: the fused kernel
    # must not store into it, and every other buffer must get the unfused bits.
    from streamq import fusion
    expected, calls = materialize(desc)
    run_unfused(calls)
    original, _ = materialize(desc)
    actual, calls = materialize(desc)
    window = fusion.FusionWindow(queue)
    assert all(window.offer(*call) for call in calls)
    dead = [i for i in range(len(actual)) if freed[i % len(freed)]]
    for i in dead:
        assert window.discard(*_bounds(actual[i]))
    window.flush()
    assert queue.synchronize(timeout=120)
    for i, (a, e, o) in enumerate(zip(actual, expected, original)):
        assert_same_bits(a, o if i in dead else e)


# ------------------------------------------------------- hand-computed values ---

def test_relu_of_affine_on_hand_computed_values(auto_fusion, queue):
    x = np.array([-1.0, 0.0, 0.25, np.nan, np.inf, -np.inf, -0.5, 3.0], np.float32)
    t, y = np.empty_like(x), np.empty_like(x)
    calls = [("aten::mul", (x, 2.0), {"out": t}),
             ("aten::add_", (t, 1), {}),
             ("aten::relu", (t,), {"out": y})]
    run_window(queue, calls)
    np.testing.assert_array_equal(t, [-1.0, 1.0, 1.5, np.nan, np.inf, -np.inf, 0.0, 7.0])
    np.testing.assert_array_equal(y, [0.0, 1.0, 1.5, np.nan, np.inf, 0.0, 0.0, 7.0])


def test_every_step_rounds_to_float32(auto_fusion, queue):
    # a*b = 1 + 2**-11 + 2**-24 exactly; float32 rounds that tie to 1 + 2**-11, so
    # (a*b) - 1 is 2**-11 when each op rounds, 2**-11 + 2**-24 if computed wider.
    a = np.full(4, 1 + 2.0**-12, np.float32)
    t, y = np.empty_like(a), np.empty_like(a)
    run_window(queue, [("aten::mul", (a, a), {"out": t}),
                       ("aten::sub", (t, 1.0), {"out": y})])
    np.testing.assert_array_equal(y, np.full(4, 2.0**-11, np.float32))


def test_broadcast_bias_scale_chain_on_hand_computed_values(auto_fusion, queue):
    x = np.arange(6, dtype=np.float64).reshape(2, 3) - 2.0      # [[-2,-1,0],[1,2,3]]
    w = np.array([1.0, -1.0, 2.0])
    b = np.array([[10.0], [20.0]])
    y = np.empty((2, 3))
    run_window(queue, [("aten::mul", (x, w), {"out": y}),
                       ("aten::add_", (y, b), {"alpha": 0.5}),
                       ("cudnn.activation_forward", (y, y), {"mode": "clipped_relu", "coef": 7.0})])
    # x*w = [[-2,1,0],[1,-2,6]]; + 0.5*b = [[3,6,5],[11,8,16]]; clipped to [0, 7]
    np.testing.assert_array_equal(y, [[3.0, 6.0, 5.0], [7.0, 7.0, 7.0]])


# ---------------------------------------------- transcendental ATen ops ---

BIG = 8192   # >= the numba provider's threshold, where it runs its own kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chain", ["sigmoid", "tanh"])
def test_sigmoid_and_tanh_chains_fuse_bit_exactly(chain, dtype, auto_fusion, queue):
    def build():
        rng = np.random.default_rng(7)
        x = (rng.standard_normal(BIG) * 12).astype(dtype)
        x[:len(SPECIALS)] = SPECIALS
        g = rng.standard_normal(BIG).astype(dtype)
        outs = [np.empty(BIG, dtype) for _ in range(3)]
        calls = [("aten::mul", (x, 0.75), {"out": outs[0]}),
                 (f"aten::{chain}_", (outs[0],), {}),
                 (f"aten::{chain}_backward", (g, outs[0]), {"out": outs[1]}),
                 (f"aten::{chain}", (outs[1],), {"out": outs[2]})]
        return [x, g] + outs, calls

    expected, calls = build()
    run_unfused(calls)
    actual, calls = build()
    taken, tasks = run_window(queue, calls)
    assert all(taken) and len(tasks) == 1 and tasks[0].name.startswith("fused[")
    for a, e in zip(actual, expected):
        assert_same_bits(a, e)


def test_small_sigmoid_is_not_fused_where_the_provider_uses_numpy(auto_fusion, queue):
    from streamq import fusion
    x = np.ones(16, np.float32)
    w = fusion.FusionWindow(queue)
    assert w.offer("aten::sigmoid", (x,), {"out": np.empty_like(x)}) is False
    big = np.ones(BIG, np.float32)
    assert w.offer("aten::sigmoid", (big,), {"out": np.empty_like(big)}) is True
    assert w.offer("aten::sigmoid", (big[::2],), {"out": np.empty(BIG // 2, np.float32)}) is False
    w.flush()
