"""cuDNN activation, batch norm, softmax, tensor ops and dropout kernels.

Every provider is checked against the float64 ``reference``; the reference
itself is checked against independent computations (math-module loops, hand
values, identities); backward ops against finite differences.
"""

import math

import numpy as np
import pytest

import streamq.kernels as K
from streamq.kernels.dnn_ops import (ACTIVATION_MODES, BATCH_NORM_MODES, OP_TENSOR_OPS,
                                     SOFTMAX_ALGORITHMS, SOFTMAX_MODES, keep_mask_reference)

DTYPES = [np.float32, np.float64, np.float16]
# float32: kernels compute in float32 with ~1-2 ulp exp/tanh and float64
# accumulations, so 1e-5 relative (plus a small absolute floor) holds.
# float16: one ulp of the stored value is ~1e-3.
TOL = {np.float16: dict(rtol=3e-3, atol=3e-3), np.float32: dict(rtol=1e-5, atol=1e-6),
       np.float64: dict(rtol=1e-11, atol=1e-12)}


def rng():
    return np.random.default_rng(7)


def close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale, equal_nan=True)


def fd_grad(loss, x, h=1e-6):
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (loss(xp) - loss(xm)) / (2 * h)
    return g


# ==========================================================================
# activation
# ==========================================================================

AF, AB = "cudnn.activation_forward", "cudnn.activation_backward"
COEF = 1.5


def naive_activation(mode, v, coef):
    if math.isnan(v):
        return v
    if mode == "relu":
        return v if v > 0 else 0.0
    if mode == "sigmoid":
        return 1 / (1 + math.exp(-v)) if v > -700 else 0.0
    if mode == "tanh":
        return math.tanh(v)
    if mode == "clipped_relu":
        return min(max(v, 0.0), coef)
    if mode == "elu":
        return v if v > 0 else coef * math.expm1(v)
    if mode == "swish":
        return v / (1 + math.exp(-coef * v)) if coef * v > -700 else 0.0 * v
    return v


def act_input(dtype, shape=(3, 5, 7, 9)):
    x = (rng().standard_normal(shape) * 3).astype(dtype)
    x.flat[:6] = [np.nan, 0.0, -0.0, 1e-4, -1e-4, 30.0]
    x.flat[6:8] = [np.inf, -np.inf] if dtype != np.float16 else [60.0, -60.0]
    return x


@pytest.mark.parametrize("mode", ACTIVATION_MODES)
def test_activation_reference_matches_math_loop(mode):
    x = act_input(np.float64, (2, 3, 4, 5))
    x.flat[6:8] = [40.0, -40.0]
    y = np.empty_like(x)
    K.get(AF, "reference")(x, y, mode=mode, coef=COEF)
    expect = np.array([naive_activation(mode, v, COEF) for v in x.ravel()]).reshape(x.shape)
    np.testing.assert_allclose(y, expect, rtol=1e-14, atol=1e-300, equal_nan=True)


@pytest.mark.parametrize("provider", K.providers(AF))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ACTIVATION_MODES)
def test_activation_forward_matches_reference(provider, dtype, mode):
    x = act_input(dtype)
    expect = np.empty_like(x)
    K.get(AF, "reference")(x, expect, mode=mode, coef=COEF, alpha=1.5)
    y = np.full_like(x, np.nan)
    K.get(AF, provider)(x, y, mode=mode, coef=COEF, alpha=1.5)
    close(y, expect, dtype)
    assert np.isnan(y.flat[0])                      # NaN propagates, relu included
    y0 = rng().standard_normal(x.shape).astype(dtype)
    expect, y = y0.copy(), y0.copy()
    K.get(AF, "reference")(x, expect, mode=mode, coef=COEF, alpha=-0.5, beta=0.75)
    K.get(AF, provider)(x, y, mode=mode, coef=COEF, alpha=-0.5, beta=0.75)
    close(y, expect, dtype)


@pytest.mark.parametrize("provider", K.providers(AB))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ACTIVATION_MODES)
def test_activation_backward_matches_reference(provider, dtype, mode):
    x = act_input(dtype)
    y = np.empty_like(x)
    K.get(AF, "reference")(x, y, mode=mode, coef=COEF)
    dy = rng().standard_normal(x.shape).astype(dtype)
    for alpha, beta in ((1.0, 0.0), (2.0, 0.5)):
        dx0 = np.full_like(x, np.nan) if beta == 0 else np.ones_like(x)
        expect, dx = dx0.copy(), dx0.copy()
        K.get(AB, "reference")(y, dy, x, expect, mode=mode, coef=COEF, alpha=alpha, beta=beta)
        K.get(AB, provider)(y, dy, x, dx, mode=mode, coef=COEF, alpha=alpha, beta=beta)
        close(dx, expect, dtype)


@pytest.mark.parametrize("provider", K.providers(AB))
@pytest.mark.parametrize("mode", ACTIVATION_MODES)
def test_activation_backward_finite_differences(provider, mode):
    x = rng().standard_normal((2, 3, 4, 5)) * 2
    x[np.abs(x) < 0.05] = 0.3                          # keep away from the relu kinks
    x[np.abs(x - COEF) < 0.05] = 0.7
    dy = rng().standard_normal(x.shape)

    def fwd(xx):
        yy = np.empty_like(xx)
        K.get(AF, "reference")(xx, yy, mode=mode, coef=COEF)
        return yy
    h = 1e-6
    fd = (fwd(x + h) - fwd(x - h)) / (2 * h) * dy       # elementwise op: diagonal Jacobian
    dx = np.empty_like(x)
    K.get(AB, provider)(fwd(x), dy, x, dx, mode=mode, coef=COEF)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("provider", K.providers(AF))
def test_activation_in_place_and_non_contiguous(provider):
    base = act_input(np.float32, (4, 6, 8, 10))
    x = base[:, ::2, :, ::3]
    expect = np.empty(x.shape, np.float32)
    K.get(AF, "reference")(np.ascontiguousarray(x), expect, mode="swish", coef=COEF)
    y = np.zeros((4, 3, 8, 8), np.float32).transpose(0, 1, 3, 2)[..., :4]
    K.get(AF, provider)(x, y, mode="swish", coef=COEF)
    close(y, expect, np.float32)
    inplace = np.ascontiguousarray(x)
    K.get(AF, provider)(inplace, inplace, mode="swish", coef=COEF)
    close(inplace, expect, np.float32)


@pytest.mark.parametrize("provider", K.providers(AF))
def test_activation_bad_arguments(provider):
    f, b = K.get(AF, provider), K.get(AB, provider)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="mode"):
        f(x, x.copy(), mode="gelu")
    with pytest.raises(ValueError, match="coef"):
        f(x, x.copy(), mode="clipped_relu", coef=-1.0)
    with pytest.raises(ValueError, match="coef"):
        f(x, x.copy(), mode="elu", coef=np.nan)
    with pytest.raises(ValueError, match="y must have the shape"):
        f(x, np.zeros((3, 2), np.float32), mode="relu")
    with pytest.raises(TypeError, match="y must have the dtype"):
        f(x, np.zeros((2, 3)), mode="relu")
    with pytest.raises(TypeError, match="x must be float"):
        f(x.astype(int), x, mode="relu")
    with pytest.raises(TypeError, match="x must be a numpy array"):
        f([1.0], x, mode="relu")
    with pytest.raises(TypeError, match="beta"):
        f(x, x.copy(), mode="relu", beta=None)
    with pytest.raises(ValueError, match="dy must have the shape"):
        b(x, x[:1], x, x.copy(), mode="relu")


# ==========================================================================
# batch norm
# ==========================================================================

BT, BI, BB = ("cudnn.batch_norm_forward_training", "cudnn.batch_norm_forward_inference",
              "cudnn.batch_norm_backward")
EPS = 1e-5


def bn_setup(mode, dtype, shape=(3, 4, 5, 6), compact=False, pdtype=np.float32):
    r = rng()
    x = (r.standard_normal(shape) * 2 + 3).astype(dtype)
    full = (1, shape[1], 1, 1) if mode == "spatial" else (1,) + shape[1:]
    pshape = full[1:2] if (compact and mode == "spatial") else (full[1:] if compact else full)
    params = [r.standard_normal(pshape).astype(pdtype) for _ in range(2)]
    return x, pshape, params


def run_training(provider, mode, x, pshape, scale, bias, alpha=1.0, beta=0.0, y0=None):
    y = np.full_like(x, np.nan) if y0 is None else y0.copy()
    rm = np.linspace(-1, 1, int(np.prod(pshape))).reshape(pshape)
    rv = np.linspace(1, 2, int(np.prod(pshape))).reshape(pshape)
    sm, si = np.empty(pshape), np.empty(pshape)
    K.get(BT, provider)(x, y, scale, bias, mode=mode, epsilon=EPS,
                        exponential_average_factor=0.1, running_mean=rm, running_var=rv,
                        save_mean=sm, save_inv_variance=si, alpha=alpha, beta=beta)
    return y, rm, rv, sm, si


def test_batch_norm_reference_hand_computed():
    # One channel, values 1..4 over N*H*W: mean 2.5, biased var 1.25, unbiased 5/3.
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 1, 1, 2)
    y, rm, rv, sm, si = [np.empty(s) for s in (x.shape, (1,), (1,), (1,), (1,))]
    rm[:], rv[:] = 10.0, 10.0
    K.get(BT, "reference")(x, y, np.array([2.0]), np.array([0.5]), mode="spatial",
                           epsilon=0.0, exponential_average_factor=0.5, running_mean=rm,
                           running_var=rv, save_mean=sm, save_inv_variance=si)
    xhat = (np.array([1, 2, 3, 4]) - 2.5) / math.sqrt(1.25)
    np.testing.assert_allclose(y.ravel(), 2 * xhat + 0.5, rtol=1e-14)
    np.testing.assert_allclose([rm[0], rv[0], sm[0], si[0]],
                               [0.5 * 10 + 0.5 * 2.5, 0.5 * 10 + 0.5 * 5 / 3, 2.5,
                                1 / math.sqrt(1.25)], rtol=1e-14)


@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
def test_batch_norm_reference_statistics_identities(mode):
    """Output has per-statistic mean = bias and biased std = |scale| (up to eps)."""
    x, pshape, (scale, bias) = bn_setup(mode, np.float64)
    y, _, _, _, _ = run_training("reference", mode, x, pshape, scale, bias)
    axes = (0, 2, 3) if mode == "spatial" else (0,)
    np.testing.assert_allclose(y.mean(axis=axes, keepdims=True), bias, atol=1e-12)
    var = x.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(y.std(axis=axes, keepdims=True),
                               np.abs(scale) * np.sqrt(var / (var + EPS)), rtol=1e-12)


@pytest.mark.parametrize("provider", K.providers(BT))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
def test_batch_norm_training_matches_reference(provider, dtype, mode):
    for compact, shape in ((False, (3, 4, 5, 6)), (True, (2, 3, 7, 5))):
        x, pshape, (scale, bias) = bn_setup(mode, dtype, shape, compact)
        ref = run_training("reference", mode, x, pshape, scale, bias)
        got = run_training(provider, mode, x, pshape, scale, bias)
        close(got[0], ref[0], dtype, 10)        # y: normalised, O(1) values
        for a, e in zip(got[1:], ref[1:]):      # float64 statistics of the same data
            np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
    y0 = rng().standard_normal(x.shape).astype(dtype)
    ref = run_training("reference", mode, x, pshape, scale, bias, 0.5, -1.0, y0)
    got = run_training(provider, mode, x, pshape, scale, bias, 0.5, -1.0, y0)
    close(got[0], ref[0], dtype, 10)


@pytest.mark.parametrize("provider", K.providers(BI))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
def test_batch_norm_inference_matches_reference_and_training(provider, dtype, mode):
    x, pshape, (scale, bias) = bn_setup(mode, dtype)
    xf = x.astype(np.float64)
    axes = (0, 2, 3) if mode == "spatial" else (0,)
    mean = xf.mean(axis=axes, keepdims=True).reshape(pshape)
    var = xf.var(axis=axes, keepdims=True).reshape(pshape)
    for alpha, beta in ((1.0, 0.0), (2.0, 0.5)):
        y0 = np.full_like(x, np.nan) if beta == 0 else np.ones_like(x)
        expect, y = y0.copy(), y0.copy()
        K.get(BI, "reference")(x, expect, scale, bias, mean, var, mode=mode, epsilon=EPS,
                               alpha=alpha, beta=beta)
        K.get(BI, provider)(x, y, scale, bias, mean, var, mode=mode, epsilon=EPS,
                            alpha=alpha, beta=beta)
        close(y, expect, dtype, 10)
    # Identity: inference with the batch statistics equals training's output.
    train = run_training("reference", mode, x, pshape, scale, bias)[0]
    K.get(BI, "reference")(x, expect, scale, bias, mean, var, mode=mode, epsilon=EPS)
    close(expect, train, dtype)


@pytest.mark.parametrize("provider", K.providers(BB))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
def test_batch_norm_backward_matches_reference(provider, dtype, mode):
    x, pshape, (scale, _) = bn_setup(mode, dtype)
    _, _, _, sm, si = run_training("reference", mode, x, pshape, scale, scale)
    dy = rng().standard_normal(x.shape).astype(dtype)
    for saved in (False, True):
        kw = dict(mode=mode, epsilon=EPS, alpha_data=1.5, beta_data=0.5, alpha_param=2.0,
                  beta_param=0.25)
        if saved:
            kw.update(saved_mean=sm, saved_inv_variance=si, beta_data=0.0, beta_param=0.0)
        outs = {}
        for prov in ("reference", provider):
            fill = np.nan if saved else 1.0                # beta == 0: NaN must not leak
            dx = np.full_like(x, fill)
            ds, db = np.full(pshape, fill, np.float32), np.full(pshape, fill, np.float32)
            K.get(BB, prov)(x, dy, dx, scale, ds, db, **kw)
            outs[prov] = (dx, ds, db)
        close(outs[provider][0], outs["reference"][0], dtype, 10)
        for a, e in zip(outs[provider][1:], outs["reference"][1:]):
            np.testing.assert_allclose(a, e, rtol=1e-4 if dtype == np.float16 else 1e-5,
                                       atol=1e-4)


@pytest.mark.parametrize("provider", K.providers(BB))
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
def test_batch_norm_backward_finite_differences(provider, mode):
    x, pshape, (scale, bias) = bn_setup(mode, np.float64, (3, 2, 2, 3))
    scale, bias = scale.astype(np.float64), bias.astype(np.float64)
    dy = rng().standard_normal(x.shape)

    def loss(xx, sc, bi):
        y = np.empty_like(xx)
        K.get(BT, "reference")(xx, y, sc, bi, mode=mode, epsilon=EPS)
        return float((y * dy).sum())
    dx, ds, db = np.empty_like(x), np.empty(pshape), np.empty(pshape)
    K.get(BB, provider)(x, dy, dx, scale, ds, db, mode=mode, epsilon=EPS)
    np.testing.assert_allclose(dx, fd_grad(lambda v: loss(v, scale, bias), x),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ds, fd_grad(lambda v: loss(x, v, bias), scale),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, fd_grad(lambda v: loss(x, scale, v), bias),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("provider", K.providers(BT))
def test_batch_norm_non_contiguous(provider):
    base = (rng().standard_normal((4, 8, 6, 10)) + 1).astype(np.float32)
    x = base[::2, ::2, :, ::2]
    scale, bias = np.ones(4, np.float32), np.zeros(4, np.float32)
    ref = np.empty(x.shape, np.float32)
    K.get(BT, "reference")(np.ascontiguousarray(x), ref, scale, bias, mode="spatial",
                           epsilon=EPS)
    y = np.zeros((2, 4, 5, 6), np.float32).transpose(0, 1, 3, 2)
    K.get(BT, provider)(x, y, scale, bias, mode="spatial", epsilon=EPS)
    close(y, ref, np.float32, 10)


@pytest.mark.parametrize("provider", K.providers(BT))
def test_batch_norm_bad_arguments(provider):
    x = np.ones((2, 3, 2, 2), np.float32)
    y, p = np.empty_like(x), np.ones((1, 3, 1, 1), np.float32)
    f, b = K.get(BT, provider), K.get(BB, provider)
    with pytest.raises(ValueError, match="mode"):
        f(x, y, p, p, mode="layer", epsilon=EPS)
    with pytest.raises(ValueError, match="scale must have shape"):
        f(x, y, np.ones(4, np.float32), p, mode="spatial", epsilon=EPS)
    with pytest.raises(ValueError, match="bias must have shape"):
        f(x, y, np.ones((3, 2, 2), np.float32), p, mode="per_activation", epsilon=EPS)
    with pytest.raises(ValueError, match="epsilon"):
        f(x, y, p, p, mode="spatial", epsilon=-1.0)
    with pytest.raises(ValueError, match="exponential_average_factor"):
        f(x, y, p, p, mode="spatial", epsilon=EPS, exponential_average_factor=1.5)
    with pytest.raises(ValueError, match="running_var must have shape"):
        f(x, y, p, p, mode="spatial", epsilon=EPS, running_var=np.ones(2))
    with pytest.raises(ValueError, match="at least 2 values"):
        f(x[:1, :, :1, :1], y[:1, :, :1, :1], p, p, mode="spatial", epsilon=EPS)
    with pytest.raises(TypeError, match="scale must be float"):
        f(x, y, p.astype(int), p, mode="spatial", epsilon=EPS)
    with pytest.raises(ValueError, match="saved_mean and saved_inv_variance"):
        b(x, x, y, p, p.copy(), p.copy(), mode="spatial", epsilon=EPS, saved_mean=p)
    with pytest.raises(ValueError, match="dx must have the shape"):
        b(x, x, y[:1], p, p.copy(), p.copy(), mode="spatial", epsilon=EPS)


# ==========================================================================
# softmax
# ==========================================================================

SF, SB = "cudnn.softmax_forward", "cudnn.softmax_backward"
SM_SHAPES = [(3, 7, 1, 1), (1, 5, 3, 4), (2, 6, 2, 3)]


def test_softmax_reference_matches_math_loop():
    x = rng().standard_normal((2, 3, 2, 2))
    for mode in SOFTMAX_MODES:
        y, ylog = np.empty_like(x), np.empty_like(x)
        K.get(SF, "reference")(x, y, algorithm="accurate", mode=mode)
        K.get(SF, "reference")(x, ylog, algorithm="log", mode=mode)
        for n in range(2):
            groups = ([(slice(None), h, w) for h in range(2) for w in range(2)]
                      if mode == "channel" else [(slice(None),) * 3])
            for g in groups:
                vals = x[n][g].ravel()
                denom = sum(math.exp(v) for v in vals)
                np.testing.assert_allclose(y[n][g].ravel(), [math.exp(v) / denom for v in vals],
                                           rtol=1e-14)
                np.testing.assert_allclose(ylog[n][g].ravel(),
                                           [v - math.log(denom) for v in vals], rtol=1e-13)
    # Large inputs do not overflow (max subtraction), also for "fast".
    big = np.array([1000.0, 1000.0]).reshape(1, 2, 1, 1)
    out = np.empty_like(big)
    K.get(SF, "reference")(big, out, algorithm="fast", mode="instance")
    assert out.ravel().tolist() == [0.5, 0.5]


@pytest.mark.parametrize("provider", K.providers(SF))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", SOFTMAX_ALGORITHMS)
@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_softmax_forward_matches_reference(provider, dtype, algorithm, mode):
    shapes = SM_SHAPES + ([(40, 1000, 1, 1), (2, 5, 30, 20)] if dtype == np.float32 else [])
    for shape in shapes:                           # the large ones take the parallel path
        x = (rng().standard_normal(shape) * 4).astype(dtype)
        x.flat[0] = 50.0
        for alpha, beta in ((1.0, 0.0), (0.5, 2.0)):
            y0 = np.full_like(x, np.nan) if beta == 0 else np.ones_like(x)
            expect, y = y0.copy(), y0.copy()
            kw = dict(algorithm=algorithm, mode=mode, alpha=alpha, beta=beta)
            K.get(SF, "reference")(x, expect, **kw)
            K.get(SF, provider)(x, y, **kw)
            close(y, expect, dtype, 10 if algorithm == "log" else 1)


@pytest.mark.parametrize("provider", K.providers(SF))
def test_softmax_nan_fills_its_group(provider):
    x = np.zeros((2, 3, 1, 2), np.float32)
    x[0, 1, 0, 0] = np.nan
    y = np.empty_like(x)
    K.get(SF, provider)(x, y, algorithm="accurate", mode="channel")
    assert np.isnan(y[0, :, 0, 0]).all() and not np.isnan(y[0, :, 0, 1]).any()
    assert not np.isnan(y[1]).any()


@pytest.mark.parametrize("provider", K.providers(SB))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", SOFTMAX_ALGORITHMS)
@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_softmax_backward_matches_reference(provider, dtype, algorithm, mode):
    shapes = SM_SHAPES + ([(40, 1000, 1, 1), (2, 5, 30, 20)] if dtype == np.float32 else [])
    for shape in shapes:
        x = rng().standard_normal(shape).astype(dtype)
        y = np.empty_like(x)
        K.get(SF, "reference")(x, y, algorithm=algorithm, mode=mode)
        dy = rng().standard_normal(shape).astype(dtype)
        for alpha, beta in ((1.0, 0.0), (2.0, -1.0)):
            d0 = np.full_like(x, np.nan) if beta == 0 else np.ones_like(x)
            expect, dx = d0.copy(), d0.copy()
            kw = dict(algorithm=algorithm, mode=mode, alpha=alpha, beta=beta)
            K.get(SB, "reference")(y, dy, expect, **kw)
            K.get(SB, provider)(y, dy, dx, **kw)
            close(dx, expect, dtype, 10)


@pytest.mark.parametrize("provider", K.providers(SB))
@pytest.mark.parametrize("algorithm", SOFTMAX_ALGORITHMS)
@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_softmax_backward_finite_differences(provider, algorithm, mode):
    x = rng().standard_normal((2, 3, 2, 2))
    dy = rng().standard_normal(x.shape)

    def fwd(xx):
        yy = np.empty_like(xx)
        K.get(SF, "reference")(xx, yy, algorithm=algorithm, mode=mode)
        return yy
    dx = np.empty_like(x)
    K.get(SB, provider)(fwd(x), dy, dx, algorithm=algorithm, mode=mode)
    np.testing.assert_allclose(dx, fd_grad(lambda v: float((fwd(v) * dy).sum()), x),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("provider", K.providers(SF))
@pytest.mark.parametrize("algorithm", ["fast", "accurate", "log"])
@pytest.mark.parametrize("mode,shape", [("instance", (2, 3, 4, 4)), ("instance", (2, 5, 1, 1)),
                                        ("channel", (2, 5, 1, 1)), ("channel", (2, 3, 4, 4))])
def test_softmax_in_place_equals_out_of_place(provider, algorithm, mode, shape):
    # cuDNN allows y == x; the result must not depend on it (a row kernel once reused y as scratch).
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    out = np.empty_like(x)
    K.get(SF, provider)(x, out, algorithm=algorithm, mode=mode)
    y = x.copy()
    K.get(SF, provider)(y, y, algorithm=algorithm, mode=mode)
    np.testing.assert_array_equal(y, out)


@pytest.mark.parametrize("provider", K.providers(SF))
def test_softmax_non_contiguous_and_errors(provider):
    base = rng().standard_normal((2, 8, 3, 8)).astype(np.float32)
    x = base[:, ::2, :, ::2]
    for mode in SOFTMAX_MODES:
        expect = np.empty(x.shape, np.float32)
        K.get(SF, "reference")(np.ascontiguousarray(x), expect, algorithm="log", mode=mode)
        y = np.zeros((2, 4, 4, 3), np.float32).transpose(0, 1, 3, 2)
        K.get(SF, provider)(x, y, algorithm="log", mode=mode)
        close(y, expect, np.float32, 10)
    f = K.get(SF, provider)
    with pytest.raises(ValueError, match="algorithm"):
        f(x, x.copy(), algorithm="exact", mode="channel")
    with pytest.raises(ValueError, match="mode"):
        f(x, x.copy(), algorithm="log", mode="spatial")
    with pytest.raises(ValueError, match="x must have at least 2"):
        f(x[0, 0, 0], x[0, 0, 0].copy(), algorithm="log", mode="instance")
    with pytest.raises(ValueError, match="y must have the shape"):
        f(x, base, algorithm="log", mode="instance")


# ==========================================================================
# tensor ops
# ==========================================================================

BROADCASTS = [(2, 3, 4, 5), (1, 3, 1, 1), (1, 1, 1, 1), (2, 1, 4, 1), (1, 3, 4, 5)]


def naive_broadcast_index(shape, idx):
    return tuple(i if s > 1 else 0 for s, i in zip(shape, idx))


def test_add_and_op_tensor_reference_match_loops():
    r = rng()
    c0 = r.standard_normal((2, 3, 2, 2))
    a, b = r.standard_normal((1, 3, 1, 1)), r.standard_normal((2, 1, 2, 1))
    c = c0.copy()
    K.get("cudnn.add_tensor", "reference")(a, c, alpha=2.0, beta=0.5)
    for idx in np.ndindex(c.shape):
        assert c[idx] == pytest.approx(2 * a[naive_broadcast_index(a.shape, idx)]
                                       + 0.5 * c0[idx], rel=1e-15)
    fns = {"add": lambda u, v: u + v, "mul": lambda u, v: u * v, "min": min, "max": max,
           "sqrt": lambda u, v: math.sqrt(u) if u >= 0 else math.nan, "not": lambda u, v: 1 - u}
    for op, fn in fns.items():
        c = c0.copy()
        K.get("cudnn.op_tensor", "reference")(op, a, b, c, alpha1=1.5, alpha2=-2.0, beta=0.25)
        for idx in np.ndindex(c.shape):
            u = 1.5 * a[naive_broadcast_index(a.shape, idx)]
            v = -2.0 * b[naive_broadcast_index(b.shape, idx)]
            expect = fn(u, v) + 0.25 * c0[idx]
            assert c[idx] == pytest.approx(expect, rel=1e-14, nan_ok=True)


@pytest.mark.parametrize("provider", K.providers("cudnn.add_tensor"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_tensor_matches_reference(provider, dtype):
    r = rng()
    for ashape in BROADCASTS:
        a = r.standard_normal(ashape).astype(dtype)
        for alpha, beta in ((1.0, 1.0), (2.0, 0.0), (-1.0, 0.5)):
            c0 = (np.full((2, 3, 4, 5), np.nan, dtype) if beta == 0
                  else r.standard_normal((2, 3, 4, 5)).astype(dtype))
            expect, c = c0.copy(), c0.copy()
            K.get("cudnn.add_tensor", "reference")(a, expect, alpha=alpha, beta=beta)
            K.get("cudnn.add_tensor", provider)(a, c, alpha=alpha, beta=beta)
            close(c, expect, dtype)
    big = np.zeros((3, 70000), dtype)                   # rows split into chunks
    K.get("cudnn.add_tensor", provider)(np.ones((1, 70000), dtype), big, alpha=2, beta=1)
    assert (big == 2).all()


@pytest.mark.parametrize("provider", K.providers("cudnn.op_tensor"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OP_TENSOR_OPS)
def test_op_tensor_matches_reference(provider, dtype, op):
    r = rng()
    for ashape, bshape in ((BROADCASTS[0], BROADCASTS[0]), (BROADCASTS[0], BROADCASTS[1]),
                           (BROADCASTS[3], BROADCASTS[0]), (BROADCASTS[2], BROADCASTS[4])):
        a = r.standard_normal(ashape).astype(dtype)
        b = r.standard_normal(bshape).astype(dtype)
        a.flat[0], b.flat[-1] = np.nan, np.nan
        for beta in (0.0, 0.5):
            c0 = (np.full((2, 3, 4, 5), np.nan, dtype) if beta == 0
                  else r.standard_normal((2, 3, 4, 5)).astype(dtype))
            expect, c = c0.copy(), c0.copy()
            kw = dict(alpha1=1.5, alpha2=-0.5, beta=beta)
            K.get("cudnn.op_tensor", "reference")(op, a, b, expect, **kw)
            K.get("cudnn.op_tensor", provider)(op, a, b, c, **kw)
            close(c, expect, dtype)
    if op in ("sqrt", "not"):                          # unary: b may be None
        c = np.empty((2, 3, 4, 5), dtype)
        K.get("cudnn.op_tensor", provider)(op, a, None, c, alpha1=1.0, alpha2=1.0, beta=0.0)


@pytest.mark.parametrize("provider", K.providers("cudnn.transform_tensor"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_transform_tensor_layouts(provider, dtype):
    r = rng()
    x = r.standard_normal((2, 3, 4, 5)).astype(dtype)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))       # physical NHWC
    x_view = nhwc.transpose(0, 3, 1, 2)                        # logical NCHW view
    y = np.full((2, 3, 4, 5), np.nan, dtype)
    K.get("cudnn.transform_tensor", provider)(x_view, y)       # NHWC -> NCHW
    np.testing.assert_array_equal(y, x)
    out = np.empty((2, 4, 5, 3), dtype)
    K.get("cudnn.transform_tensor", provider)(x, out.transpose(0, 3, 1, 2))  # NCHW -> NHWC
    np.testing.assert_array_equal(out, nhwc)
    y0 = r.standard_normal(x.shape).astype(dtype)
    expect, y = y0.copy(), y0.copy()
    K.get("cudnn.transform_tensor", "reference")(x_view, expect, alpha=2.0, beta=-1.0)
    K.get("cudnn.transform_tensor", provider)(x_view, y, alpha=2.0, beta=-1.0)
    close(y, expect, dtype)
    close(expect, 2.0 * x.astype(np.float64) - y0, dtype)     # independent check
    five = r.standard_normal((2, 2, 3, 2, 2)).astype(dtype)
    y5 = np.empty_like(five)
    K.get("cudnn.transform_tensor", provider)(five[:, :, ::-1], y5)
    np.testing.assert_array_equal(y5, five[:, :, ::-1])


@pytest.mark.parametrize("provider", K.providers("cudnn.scale_tensor"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_and_set_tensor(provider, dtype):
    y = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    K.get("cudnn.scale_tensor", provider)(y, 0.5)
    np.testing.assert_array_equal(y, np.arange(24).reshape(2, 3, 4) * 0.5)
    view = y[:, ::2]
    K.get("cudnn.scale_tensor", provider)(view, -2.0)
    np.testing.assert_array_equal(y[:, 1], np.arange(24).reshape(2, 3, 4)[:, 1] * 0.5)
    np.testing.assert_array_equal(view, np.arange(24).reshape(2, 3, 4)[:, ::2] * -1.0)
    K.get("cudnn.set_tensor", provider)(y, 3.25)
    assert (y == 3.25).all()
    K.get("cudnn.set_tensor", provider)(view, np.nan)
    assert np.isnan(y[:, ::2]).all() and (y[:, 1] == 3.25).all()


@pytest.mark.parametrize("provider", K.providers("cudnn.op_tensor"))
def test_tensor_ops_bad_arguments(provider):
    c = np.zeros((2, 3, 4, 5), np.float32)
    add, op = K.get("cudnn.add_tensor", provider), K.get("cudnn.op_tensor", provider)
    with pytest.raises(ValueError, match="a of shape"):
        add(np.zeros((1, 3, 2, 1), np.float32), c, alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="a of shape"):
        add(np.zeros((3, 1, 1), np.float32), c, alpha=1.0, beta=1.0)
    with pytest.raises(TypeError, match="a must have the dtype"):
        add(np.zeros((1, 3, 1, 1)), c, alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="op must be one of"):
        op("div", c, c, c.copy(), alpha1=1.0, alpha2=1.0, beta=0.0)
    with pytest.raises(ValueError, match="b of shape"):
        op("add", c, np.zeros((2, 3, 4, 2), np.float32), c.copy(), alpha1=1.0, alpha2=1.0,
           beta=0.0)
    with pytest.raises(TypeError, match="b must be a numpy array"):
        op("mul", c, None, c.copy(), alpha1=1.0, alpha2=1.0, beta=0.0)
    with pytest.raises(ValueError, match="alpha2"):
        op("mul", c, c, c.copy(), alpha1=1.0, alpha2=np.inf, beta=0.0)
    with pytest.raises(ValueError, match="x must have the shape"):
        K.get("cudnn.transform_tensor", provider)(c[:1], c)
    with pytest.raises(TypeError, match="y must be float"):
        K.get("cudnn.set_tensor", provider)(c.astype(int), 1.0)
    with pytest.raises(TypeError, match="alpha"):
        K.get("cudnn.scale_tensor", provider)(c, "2")


# ==========================================================================
# dropout
# ==========================================================================

DF, DB = "cudnn.dropout_forward", "cudnn.dropout_backward"


@pytest.mark.parametrize("provider", K.providers(DF))
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_matches_reference_bit_for_bit(provider, dtype):
    x = rng().standard_normal((3, 5, 7, 9)).astype(dtype)
    x.flat[::7] = np.nan
    for p, seed, offset in ((0.3, 5, 0), (0.9, 2**63 + 11, 2**32 - 100), (0.0, 1, 3),
                            (1.0, 0, 0)):
        outs = {}
        for prov in ("reference", provider):
            y, reserve = np.full_like(x, 99.0), np.full(x.size, 7, np.uint8)
            K.get(DF, prov)(x, y, reserve, dropout=p, seed=seed, offset=offset)
            dx = np.full_like(x, 99.0)
            K.get(DB, prov)(x, dx, reserve, dropout=p)
            outs[prov] = (y, reserve, dx)
        np.testing.assert_array_equal(outs[provider][1], outs["reference"][1])
        close(outs[provider][0], outs["reference"][0], dtype)
        close(outs[provider][2], outs["reference"][2], dtype)
        keep = outs["reference"][1].reshape(x.shape) == 1
        scale = 0.0 if p == 1 else 1 / (1 - p)
        close(outs["reference"][0], np.where(keep, x.astype(np.float64) * scale, 0.0), dtype)
        assert (outs[provider][0][~keep] == 0).all()   # dropped NaN does not propagate


def test_dropout_mask_statistics_and_determinism():
    n = 200_000
    for p in (0.1, 0.5, 0.8):
        keep = keep_mask_reference(n, 42, 0, p)
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(keep.mean() - (1 - p)) < 5 * sigma
        # Neighbouring elements are independent: P(keep_i and keep_i+1) = (1-p)^2.
        assert abs((keep[1:] & keep[:-1]).mean() - (1 - p) ** 2) < 10 * sigma
    a = keep_mask_reference(1000, 42, 0, 0.5)
    assert (a == keep_mask_reference(1000, 42, 0, 0.5)).all()          # reproducible
    assert (a[300:] == keep_mask_reference(700, 42, 300, 0.5)).all()   # offset = skip ahead
    assert (a != keep_mask_reference(1000, 43, 0, 0.5)).mean() > 0.4   # seed matters
    # The counter crosses 2**32 without repeating the low half's pattern.
    lo = keep_mask_reference(512, 9, 0, 0.5)
    hi = keep_mask_reference(512, 9, 2**32, 0.5)
    assert (lo != hi).mean() > 0.4


@pytest.mark.parametrize("provider", K.providers(DF))
def test_dropout_layout_independent_and_backward_fd(provider):
    x = rng().standard_normal((2, 3, 4, 5))
    y1, r1 = np.empty_like(x), np.empty(x.size, np.uint8)
    K.get(DF, provider)(x, y1, r1, dropout=0.4, seed=3)
    xt = np.asfortranarray(x)
    y2 = np.empty_like(x, order="F")
    r2 = np.empty(x.size, np.uint8)
    K.get(DF, provider)(xt, y2, r2, dropout=0.4, seed=3)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(r1, r2)
    dy = rng().standard_normal(x.shape)

    def loss(v):
        yy, rr = np.empty_like(v), np.empty(v.size, np.uint8)
        K.get(DF, "reference")(v, yy, rr, dropout=0.4, seed=3)
        return float((yy * dy).sum())
    dx = np.empty_like(x)
    K.get(DB, provider)(dy, dx, r1, dropout=0.4)
    np.testing.assert_allclose(dx, fd_grad(loss, x), rtol=1e-6, atol=1e-7)  # FD rounding ~1e-8


@pytest.mark.parametrize("provider", K.providers(DF))
def test_dropout_bad_arguments(provider):
    x = np.zeros((2, 3), np.float32)
    y, r = np.empty_like(x), np.empty(6, np.uint8)
    f, b = K.get(DF, provider), K.get(DB, provider)
    with pytest.raises(ValueError, match="dropout"):
        f(x, y, r, dropout=1.5, seed=1)
    with pytest.raises(ValueError, match="seed"):
        f(x, y, r, dropout=0.5, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        f(x, y, r, dropout=0.5, seed=1.5)
    with pytest.raises(ValueError, match="offset"):
        f(x, y, r, dropout=0.5, seed=1, offset=2**64 - 2)
    with pytest.raises(ValueError, match="reserve must be"):
        f(x, y, np.empty(5, np.uint8), dropout=0.5, seed=1)
    with pytest.raises(TypeError, match="reserve must have dtype"):
        f(x, y, np.empty(6, np.int32), dropout=0.5, seed=1)
    with pytest.raises(ValueError, match="dx must have the shape"):
        b(x, y[:1], r, dropout=0.5)


# ==========================================================================
# coverage: batch 1, odd sizes, strided views, NaN/inf, failed calls
# ==========================================================================

def strided(a):
    """A non-contiguous view holding a's values (every other element of the last axis)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


@pytest.mark.parametrize("provider", K.providers(AB))
@pytest.mark.parametrize("mode", ACTIVATION_MODES)
def test_activation_batch1_strided_both_directions(provider, mode):
    x = act_input(np.float32, (1, 3, 5, 7))
    y = np.empty_like(x)
    K.get(AF, "reference")(x, y, mode=mode, coef=COEF)
    got = strided(np.full_like(x, np.nan))
    K.get(AF, provider)(strided(x), got, mode=mode, coef=COEF)
    close(got, y, np.float32)
    dy = rng().standard_normal(x.shape).astype(np.float32)
    expect = np.empty_like(x)
    K.get(AB, "reference")(y, dy, x, expect, mode=mode, coef=COEF)
    dx = strided(np.full_like(x, np.nan))
    K.get(AB, provider)(strided(y), strided(dy), strided(x), dx, mode=mode, coef=COEF)
    close(dx, expect, np.float32)


@pytest.mark.parametrize("provider", K.providers(BT))
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
def test_batch_norm_batch1_strided_and_nan(provider, mode):
    """Batch 1 (spatial; per-activation needs N >= 2), strided views, a NaN channel."""
    n = 1 if mode == "spatial" else 2
    x, pshape, (scale, bias) = bn_setup(mode, np.float32, (n, 3, 5, 7), compact=True)
    x[0, 1, 2, 3] = np.nan                          # poisons channel 1's statistics
    x[0, 2, 0, 0] = np.inf
    sx, dy = strided(x), rng().standard_normal(x.shape).astype(np.float32)
    outs = {}
    for prov in ("reference", provider):
        src = x if prov == "reference" else sx
        y = strided(np.full_like(x, np.nan))
        sm, si = np.empty(pshape), np.empty(pshape)
        K.get(BT, prov)(src, y, scale, bias, mode=mode, epsilon=EPS, save_mean=sm,
                        save_inv_variance=si)
        yi = strided(np.full_like(x, np.nan))
        K.get(BI, prov)(src, yi, scale, bias, sm, np.abs(si), mode=mode, epsilon=EPS)
        dx = strided(np.full_like(x, np.nan))
        ds, db = np.empty(pshape, np.float32), np.empty(pshape, np.float32)
        K.get(BB, prov)(src, dy if prov == "reference" else strided(dy), dx, scale, ds, db,
                        mode=mode, epsilon=EPS, saved_mean=sm, saved_inv_variance=si)
        outs[prov] = (y, yi, dx, ds, db, sm, si)
    for a, e in zip(outs[provider], outs["reference"]):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5, equal_nan=True)
    if mode == "spatial":
        assert np.isnan(outs[provider][0][0, 1]).all()      # the NaN channel is all NaN
        assert not np.isnan(outs[provider][0][0, 0]).any()  # the others are not


@pytest.mark.parametrize("provider", K.providers(SB))
@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_softmax_backward_strided_inf_batch1(provider, mode):
    x = rng().standard_normal((1, 5, 3, 3)).astype(np.float32)
    x[0, 2, 1, 1] = np.inf                          # exp(inf - inf): that group is NaN
    for algorithm in SOFTMAX_ALGORITHMS:
        y = np.empty_like(x)
        K.get(SF, "reference")(x, y, algorithm=algorithm, mode=mode)
        got = strided(np.full_like(x, np.nan))
        K.get(SF, provider)(strided(x), got, algorithm=algorithm, mode=mode)
        close(got, y, np.float32, 10)
        dy = rng().standard_normal(x.shape).astype(np.float32)
        expect = np.empty_like(x)
        K.get(SB, "reference")(y, dy, expect, algorithm=algorithm, mode=mode)
        dx = strided(np.full_like(x, np.nan))
        K.get(SB, provider)(strided(y), strided(dy), dx, algorithm=algorithm, mode=mode)
        close(dx, expect, np.float32, 10)


@pytest.mark.parametrize("provider", K.providers("cudnn.op_tensor"))
@pytest.mark.parametrize("op", OP_TENSOR_OPS)
def test_op_tensor_strided_odd_and_inf(provider, op):
    r = rng()
    a = r.standard_normal((1, 3, 5, 7)).astype(np.float32)
    b = r.standard_normal((1, 3, 1, 7)).astype(np.float32)
    a.flat[:3] = [np.inf, -np.inf, np.nan]
    b.flat[:2] = [np.inf, -np.inf]
    c0 = r.standard_normal(a.shape).astype(np.float32)
    kw = dict(alpha1=0.5, alpha2=2.0, beta=0.25)
    expect = c0.copy()
    with np.errstate(invalid="ignore"):
        K.get("cudnn.op_tensor", "reference")(op, a, b, expect, **kw)
    c = strided(c0)
    with np.errstate(invalid="ignore"):
        K.get("cudnn.op_tensor", provider)(op, strided(a), b[..., ::-1][..., ::-1], c, **kw)
    close(c, expect, np.float32)
    expect, c = c0.copy(), strided(c0)
    K.get("cudnn.add_tensor", "reference")(b, expect, alpha=-1.0, beta=1.0)
    K.get("cudnn.add_tensor", provider)(strided(b), c, alpha=-1.0, beta=1.0)
    close(c, expect, np.float32)


@pytest.mark.parametrize("provider", K.providers(AF))
def test_failed_calls_write_nothing(provider):
    x = np.ones((2, 3, 4, 5), np.float32)
    out = np.full_like(x, 7.0)
    p = np.ones(3, np.float32)
    calls = [
        lambda: K.get(AF, provider)(x, out, mode="relu", alpha=np.inf),
        lambda: K.get(AB, provider)(x, x[:1], x, out, mode="relu"),
        lambda: K.get(BT, provider)(x, out, p, np.ones(4, np.float32), mode="spatial",
                                    epsilon=EPS),
        lambda: K.get(BB, provider)(x, x, out, p, p.copy(), np.ones(2, np.float32),
                                    mode="spatial", epsilon=EPS),
        lambda: K.get(SF, provider)(x, out, algorithm="log", mode="rows"),
        lambda: K.get("cudnn.op_tensor", provider)("add", x, x[:, :2], out, alpha1=1.0,
                                                   alpha2=1.0, beta=0.0),
        lambda: K.get(DF, provider)(x, out, np.empty(x.size - 1, np.uint8), dropout=0.5,
                                    seed=1),
    ]
    for call in calls:
        with pytest.raises((ValueError, TypeError)):
            call()
    assert (out == 7).all()


@pytest.mark.parametrize("provider", K.providers(BT))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_large_planes_path(provider, dtype):
    """Spatial planes of >= 256 values take the numba per-channel path (smaller ones the
    column path): both must match the reference, forward and backward."""
    for shape in ((2, 3, 17, 16), (1, 2, 16, 16), (3, 4, 5, 3)):
        x, pshape, (scale, bias) = bn_setup("spatial", dtype, shape, compact=True)
        ref = run_training("reference", "spatial", x, pshape, scale, bias, 1.5, 0.5,
                           np.ones_like(x))
        got = run_training(provider, "spatial", x, pshape, scale, bias, 1.5, 0.5,
                           np.ones_like(x))
        close(got[0], ref[0], dtype, 10)
        for a, e in zip(got[1:], ref[1:]):
            np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
        dy = rng().standard_normal(shape).astype(dtype)
        outs = {}
        for prov in ("reference", provider):
            dx, ds, db = np.ones_like(x), np.empty(pshape), np.empty(pshape)
            K.get(BB, prov)(x, dy, dx, scale, ds, db, mode="spatial", epsilon=EPS,
                            beta_data=0.5)
            outs[prov] = (dx, ds, db)
        close(outs[provider][0], outs["reference"][0], dtype, 10)
        for a, e in zip(outs[provider][1:], outs["reference"][1:]):
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-8)


def test_vexp_le0_accuracy_dense():
    """The softmax exp helper: <= 2 ulp on x <= 0 down to the clamp at -87.3 (exp >= 1.2e-38),
    about 1.2e-38 below it; NaN stays NaN. float64 defers to vexp."""
    from numba import njit
    from streamq.kernels._dnn_common import vexp_le0

    @njit
    def run(x, y):
        for i in range(x.size):
            y[i] = vexp_le0(x[i])
    x = np.concatenate([np.linspace(-87.3, 0, 400001), np.linspace(-1e-3, 0, 1001),
                        [-0.0, -1e-30, -87.29]]).astype(np.float32)
    y = np.empty_like(x)
    run(x, y)
    want = np.exp(x.astype(np.float64))
    ulps = np.abs(y - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 2
    low = np.array([-87.31, -100.0, -1e30, -np.inf, np.nan], np.float32)
    out = np.empty_like(low)
    run(low, out)
    assert np.all(out[:4] <= np.float32(1.3e-38)) and np.all(out[:4] >= 0) and np.isnan(out[4])
    x64 = np.linspace(-700, 0, 10001)
    y64 = np.empty_like(x64)
    run(x64, y64)
    np.testing.assert_allclose(y64, np.exp(x64), rtol=1e-15)


@pytest.mark.parametrize("provider", K.providers(SF))
@pytest.mark.parametrize("algorithm", ["accurate", "log"])
def test_softmax_rows_with_underflow_and_inf(provider, algorithm):
    # Rows of 1000 logits (the classifier head) with exps far below float32's range,
    # -inf entries, and a row holding +inf (NaN everywhere, like the reference).
    x = (rng().standard_normal((6, 1000, 1, 1)) * 30).astype(np.float32)
    x[0, :500] = -200.0
    x[1, ::3] = -np.inf
    x[2, 7] = np.inf
    x[3, 9] = np.nan
    expect, y = np.empty_like(x), np.full_like(x, 5.0)
    K.get(SF, "reference")(x, expect, algorithm=algorithm, mode="instance")
    K.get(SF, provider)(x, y, algorithm=algorithm, mode="instance")
    close(y, expect, np.float32, 10 if algorithm == "log" else 1)
    assert np.isnan(y[2]).all() and np.isnan(y[3]).all() and not np.isnan(y[[0, 1, 4, 5]]).any()
