"""Which calls are fusable, what a step reads and computes, and the rows x inner layout."""

import numpy as np
import pytest

from streamq.fusion import FUSABLE_OPS
from streamq.fusion.chain import Chain, FusedCall
from streamq.fusion.codegen import render
from streamq.fusion.layout import plan_layout
from streamq.fusion.ops import parse

pytestmark = pytest.mark.timeout(60)

F32 = np.float32


def ones(*shape, dtype=F32):
    return np.ones(shape, dtype)


def test_the_issue_names_are_all_fusable():
    base = ["add", "sub", "mul", "div", "relu", "threshold", "sigmoid", "tanh"]
    wanted = {f"aten::{b}" for b in base} | {f"aten::{b}_" for b in base}
    wanted |= {"aten::threshold_backward", "aten::sigmoid_backward", "aten::tanh_backward",
               "cudnn.activation_forward", "cudnn.add_tensor", "cudnn.op_tensor",
               "cudnn.scale_tensor"}
    assert wanted <= FUSABLE_OPS


def test_scalar_alpha_is_folded_as_the_numba_provider_folds_it():
    x = ones(8)
    step = parse("aten::sub", (x, 0.1), {"alpha": 3, "out": ones(8)})
    # self - 3 * 0.1 as float32 ops: float32(3) * float32(0.1), rounded to float32, negated
    assert step.operands[1] == F32(-(F32(3) * F32(0.1)))
    assert step.operands[1].dtype == F32 and step.reads == [x]
    assert step.body == ("{r} = {0} + {1}",)


def test_tensor_other_keeps_alpha_as_a_parameter():
    x, y = ones(4, 3), ones(3)
    step = parse("aten::add", (x, y), {"alpha": 2, "out": ones(4, 3)})
    assert step.reads == [x, y] and step.operands[2] == F32(2) and step.shape == (4, 3)


def test_in_place_ops_write_self():
    x, y = ones(4), ones(4)
    assert parse("aten::mul_", (x, y)).out is x
    assert parse("cudnn.scale_tensor", (x, 2.0)).out is x
    c = ones(2, 4)
    step = parse("cudnn.add_tensor", (ones(1, 4), c), {"alpha": 1.0, "beta": 1.0})
    assert step.out is c and any(r is c for r in step.reads)    # beta != 0 reads c
    step = parse("cudnn.add_tensor", (ones(1, 4), c), {"alpha": 1.0, "beta": 0.0})
    assert step.out is c and all(r is not c for r in step.reads)   # beta == 0 never reads c


@pytest.mark.parametrize("op, args, kwargs", [
    ("aten::add", (ones(4, dtype=np.int32), 1), {"out": ones(4, dtype=np.int32)}),
    ("aten::add", (ones(4, dtype=np.float16), 1), {"out": ones(4, dtype=np.float16)}),
    ("aten::add", (ones(4), ones(4, dtype=np.float64)), {"out": ones(4, dtype=np.float64)}),
    ("aten::add", (ones(4), 1), {"out": ones(5)}),
    ("aten::add", (ones(4), 1), {"alpha": True, "out": ones(4)}),
    ("aten::add", (ones(4), 1j), {"out": ones(4)}),
    ("aten::add_", (ones(1), ones(4)), {}),                      # would broadcast self
    ("aten::mul", (ones(4), 2), {"out": np.ones(4, F32)[::-1]}),  # negative stride
    ("aten::mul", (ones(4), 2), {"out": np.broadcast_to(ones(1), (4,))}),  # read-only
    ("aten::div", (ones(4), 2), {"rounding_mode": "floor", "out": ones(4)}),
    ("aten::relu", (ones(4),), {}),                               # out missing
    ("aten::relu", (ones(0),), {"out": ones(0)}),                 # empty
    ("aten::sum", (ones(4),), {"out": ones()}),                   # not elementwise
    ("aten::sigmoid", (ones(4),), {"out": ones(4)}),              # numpy path unfused
    ("cudnn.activation_forward", (ones(4), ones(4)), {"mode": "gelu"}),
    ("cudnn.activation_forward", (ones(4), ones(4)), {"mode": "relu", "alpha": float("inf")}),
    ("cudnn.activation_forward", (ones(4), ones(4)), {"mode": "clipped_relu", "coef": -1.0}),
    ("cudnn.add_tensor", (ones(4), ones(2, 4)), {"alpha": 1.0, "beta": 0.0}),  # ndim differs
    ("cudnn.op_tensor", ("pow", ones(4), ones(4), ones(4)), {"alpha1": 1.0, "alpha2": 1.0, "beta": 0.0}),
])
def test_calls_that_must_run_unfused(op, args, kwargs):
    assert parse(op, args, kwargs) is None


def test_a_self_overlapping_output_is_not_fusable():
    base = ones(8)
    out = np.lib.stride_tricks.as_strided(base, shape=(4, 4), strides=(4, 4))  # rows overlap
    assert parse("aten::mul", (ones(4, 4), 2.0), {"out": out}) is None


def test_chain_refusals_name_the_reason():
    buf = ones(9)
    a, b, t, u = buf[:-1], ones(8), ones(8), ones(8)
    chain = Chain(parse("aten::mul", (a, b), {"out": t}))
    assert "previous op's output" in chain.refusal(parse("aten::relu", (a,), {"out": u}))
    assert "shape" in chain.refusal(parse("aten::add", (t, ones(2, 8)), {"out": ones(2, 8)}))
    t64 = ones(8, dtype=np.float64)
    chain64 = Chain(parse("aten::relu", (t64,), {"out": t64}))
    assert chain64.refusal(parse("aten::relu", (t64,), {"out": t64})) is None
    assert chain.refusal(parse("aten::relu", (t,), {"out": a})) is None   # the same view: fine
    assert "overlaps an input" in chain.refusal(parse("aten::relu", (t,), {"out": buf[1:]}))
    with pytest.raises(ValueError, match="cannot extend"):
        chain.append(parse("aten::relu", (a,), {"out": u}))


def test_fused_call_wiring_reads_writes_and_elision():
    a, b, t = ones(8), ones(8), ones(8)
    steps = [parse("aten::mul", (a, b), {"out": t}), parse("aten::add_", (t, a), {}),
             parse("aten::relu_", (t,), {})]
    call = FusedCall(steps)
    assert call.name == "fused[aten::mul+aten::add_+aten::relu_]"
    assert call.reads == [a, b] and call.writes == [t]            # a read once, t written once
    wiring = [s.operands for s in call.program.steps]
    assert wiring == [(("in", 0), ("in", 1)), (("val", 0), ("in", 0), ("param", 0)),
                      (("val", 1),)]
    assert [s.store for s in call.program.steps] == [None, None, 0]
    with pytest.raises(ValueError, match="at least 2"):
        FusedCall(steps[:1])


def test_generated_source_loads_each_input_once_and_hoists_broadcasts():
    a, bias, t = ones(4, 8), ones(4, 1), ones(4, 8)
    call = FusedCall([parse("aten::add", (a, bias), {"out": t}), parse("aten::mul_", (t, a), {})])
    src = render(call.program, "fcf")
    assert "@njit(parallel=True, cache=True, nogil=True" in src
    assert src.count("a0[np.uint64(b0 + l)]") == 1           # a is loaded once for both steps
    assert "c1 = a1[np.uint64(b1)]" in src                   # the bias is loaded once per row
    assert "a2[np.uint64(b2 + l)] = v1" in src and "] = v0" not in src  # only the final value is stored


# ------------------------------------------------------------------- layout ---

def test_layout_merges_contiguous_dims_and_broadcast_scalars():
    lay = plan_layout((4, 5), [ones(4, 5), ones(1), ones(4, 5)])
    assert (lay.rows, lay.inner, lay.kinds) == (1, 20, "fcf")


def test_layout_of_a_per_row_bias():
    x, bias = np.arange(12, dtype=F32).reshape(3, 4), np.arange(3, dtype=F32).reshape(3, 1)
    lay = plan_layout((3, 4), [x, bias])
    assert (lay.rows, lay.inner, lay.kinds) == (3, 4, "fc")
    (fx, ox, _), (fb, ob, sb) = lay.args
    assert ox.tolist() == [0, 4, 8] and ob.tolist() == [0, 1, 2] and sb == 0
    assert fx.tolist() == list(range(12)) and fb.tolist() == [0.0, 1.0, 2.0]


def test_layout_of_a_transposed_operand():
    base = np.arange(12, dtype=F32).reshape(4, 3)
    lay = plan_layout((3, 4), [base.T, ones(3, 4)])
    assert (lay.rows, lay.inner, lay.kinds) == (3, 4, "sf")
    (flat, offsets, stride), _ = lay.args
    assert offsets.tolist() == [0, 1, 2] and stride == 3
    # element (i, j) of base.T is flat[offsets[i] + j * stride]
    assert all(flat[offsets[i] + j * stride] == base.T[i, j] for i in range(3) for j in range(4))


def test_layout_drops_unit_dims_and_handles_scalars():
    assert plan_layout((1, 5, 1), [ones(1, 5, 1)]).inner == 5
    lay = plan_layout((), [ones(), np.float32(2) * ones()])
    assert (lay.rows, lay.inner, lay.kinds) == (1, 1, "cc")
