"""Fused batch norm (+ add + ReLU): cudnn.batch_norm_forward_training_ex / backward_ex.

The reference is checked against math written here (float64 numpy: relu(bn(x) + z))
and against finite differences of that math; every provider against the reference.
"""

import numpy as np
import pytest

import streamq.kernels as K
from streamq.kernels.dnn_ops import BATCH_NORM_MODES

FX, BX = "cudnn.batch_norm_forward_training_ex", "cudnn.batch_norm_backward_ex"
EPS = 1e-5
OPS = ("bn", "bn_activation", "bn_add_activation")
DTYPES = [np.float32, np.float64, np.float16]
TOL = {np.float16: dict(rtol=3e-3, atol=3e-3), np.float32: dict(rtol=1e-5, atol=1e-6),
       np.float64: dict(rtol=1e-11, atol=1e-12)}


def close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale, equal_nan=True)


def axes_of(mode):
    return (0, 2, 3) if mode == "spatial" else (0,)


def pshape_of(mode, shape):
    return (1, shape[1], 1, 1) if mode == "spatial" else (1,) + shape[1:]


def setup(mode, dtype, shape, seed=3):
    r = np.random.default_rng(seed)
    x = (r.standard_normal(shape) * 2 + 3).astype(dtype)
    z = r.standard_normal(shape).astype(dtype)
    ps = pshape_of(mode, shape)
    scale = r.uniform(0.5, 1.5, ps).astype(np.float32)
    bias = r.uniform(-0.5, 0.5, ps).astype(np.float32)
    dy = r.standard_normal(shape).astype(dtype)
    return x, z, scale, bias, dy


def math_forward(x, z, scale, bias, mode, ops):
    """relu(scale * (x - mean) / sqrt(var + eps) + bias [+ z]) in float64, written out."""
    x = x.astype(np.float64)
    ax = axes_of(mode)
    mean, var = x.mean(axis=ax, keepdims=True), x.var(axis=ax, keepdims=True)
    v = scale.astype(np.float64) * (x - mean) / np.sqrt(var + EPS) + bias.astype(np.float64)
    if ops == "bn_add_activation":
        v = v + z.astype(np.float64)
    return np.maximum(v, 0.0) if ops != "bn" else v


def run_forward(provider, x, z, scale, bias, mode, ops, alpha=1.0, beta=0.0, y0=None):
    y = np.full_like(x, np.nan) if y0 is None else y0.copy()
    ps = scale.shape
    rm, rv = np.zeros(ps), np.ones(ps)
    sm, si = np.empty(ps), np.empty(ps)
    K.get(FX, provider)(x, z if ops == "bn_add_activation" else None, y, scale, bias, mode=mode,
                        epsilon=EPS, ops=ops, exponential_average_factor=0.1, running_mean=rm,
                        running_var=rv, save_mean=sm, save_inv_variance=si, alpha=alpha, beta=beta)
    return y, rm, rv, sm, si


@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
@pytest.mark.parametrize("ops", OPS)
def test_reference_forward_is_the_math(mode, ops):
    x, z, scale, bias, _ = setup(mode, np.float64, (3, 4, 5, 6))
    y, rm, rv, sm, si = run_forward("reference", x, z, scale, bias, mode, ops)
    np.testing.assert_allclose(y, math_forward(x, z, scale, bias, mode, ops), rtol=1e-13, atol=1e-13)
    ax = axes_of(mode)
    m = x.size // scale.size
    np.testing.assert_allclose(sm, x.mean(axis=ax, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(si, 1 / np.sqrt(x.var(axis=ax, keepdims=True) + EPS), rtol=1e-13)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=ax, keepdims=True) * m / (m - 1), rtol=1e-13)
    # blending: y = alpha * act(...) + beta * y
    y0 = np.random.default_rng(1).standard_normal(x.shape)
    y2 = run_forward("reference", x, z, scale, bias, mode, ops, 0.5, -2.0, y0)[0]
    np.testing.assert_allclose(y2, 0.5 * math_forward(x, z, scale, bias, mode, ops) - 2.0 * y0,
                               rtol=1e-13, atol=1e-13)


def test_reference_relu_hand_values_and_nan():
    # One channel 1..4: mean 2.5, var 1.25; scale 1, bias 0, z = +0.5 everywhere.
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 1, 1, 2)
    z = np.full_like(x, 0.5)
    y = np.empty_like(x)
    one, zero = np.ones(1), np.zeros(1)
    K.get(FX, "reference")(x, z, y, one, zero, mode="spatial", epsilon=0.0, ops="bn_add_activation")
    xhat = (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25)
    np.testing.assert_allclose(y.ravel(), np.maximum(xhat + 0.5, 0), rtol=1e-14)
    assert y.ravel()[0] == 0.0 and y.ravel()[2] > 0
    z[0, 0, 0, 1] = np.nan                       # ReLU propagates NaN
    K.get(FX, "reference")(x, z, y, one, zero, mode="spatial", epsilon=0.0, ops="bn_add_activation")
    assert np.isnan(y[0, 0, 0, 1]) and np.isfinite(np.delete(y.ravel(), 1)).all()


def fd(f, v, h=1e-6):
    g = np.empty_like(v)
    for idx in np.ndindex(v.shape):
        vp, vm = v.copy(), v.copy()
        vp[idx] += h
        vm[idx] -= h
        g[idx] = (f(vp) - f(vm)) / (2 * h)
    return g


@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
@pytest.mark.parametrize("ops", OPS)
@pytest.mark.parametrize("provider", K.providers(BX))
def test_backward_finite_differences(provider, mode, ops):
    """d/d(x, z, scale, bias) of sum(dy * relu(bn(x) + z)), numerically, float64."""
    x, z, scale, bias, dy = setup(mode, np.float64, (3, 2, 2, 3), seed=5)
    scale, bias = scale.astype(np.float64), bias.astype(np.float64)

    def loss(xx=x, zz=z, sc=scale, bi=bias):
        return float((dy * math_forward(xx, zz, sc, bi, mode, ops)).sum())
    y = math_forward(x, z, scale, bias, mode, ops)
    add = ops == "bn_add_activation"
    dx, dz = np.empty_like(x), (np.full_like(x, np.nan) if add else None)
    ds, db = np.empty(scale.shape), np.empty(scale.shape)
    K.get(BX, provider)(x, y if ops != "bn" else None, dy, dz, dx, scale, ds, db, mode=mode,
                        epsilon=EPS, ops=ops)
    np.testing.assert_allclose(dx, fd(lambda v: loss(xx=v), x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ds, fd(lambda v: loss(sc=v), scale), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, fd(lambda v: loss(bi=v), bias), rtol=1e-6, atol=1e-7)
    if add:
        np.testing.assert_allclose(dz, fd(lambda v: loss(zz=v), z), rtol=1e-6, atol=1e-8)


SHAPES = [(3, 4, 5, 6), (2, 3, 17, 16), (4, 5, 7, 7)]   # small planes, >= 256 values, 7x7


@pytest.mark.parametrize("provider", K.providers(FX))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
@pytest.mark.parametrize("ops", OPS)
def test_forward_matches_reference(provider, dtype, mode, ops):
    for shape in SHAPES:
        x, z, scale, bias, _ = setup(mode, dtype, shape)
        for alpha, beta, y0 in ((1.0, 0.0, None), (1.5, 0.5, np.ones_like(x))):
            ref = run_forward("reference", x, z, scale, bias, mode, ops, alpha, beta, y0)
            got = run_forward(provider, x, z, scale, bias, mode, ops, alpha, beta, y0)
            close(got[0], ref[0], dtype, 10)
            for a, e in zip(got[1:], ref[1:]):
                np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("provider", K.providers(BX))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", BATCH_NORM_MODES)
@pytest.mark.parametrize("ops", OPS)
def test_backward_matches_reference(provider, dtype, mode, ops):
    for shape in SHAPES:
        x, z, scale, bias, dy = setup(mode, dtype, shape)
        y, _, _, sm, si = run_forward("reference", x, z, scale, bias, mode, ops)
        add = ops == "bn_add_activation"
        for saved in (False, True):
            kw = dict(mode=mode, epsilon=EPS, ops=ops, alpha_data=1.5, beta_data=0.5,
                      alpha_param=2.0, beta_param=0.25)
            if saved:
                kw.update(saved_mean=sm, saved_inv_variance=si, beta_data=0.0, beta_param=0.0)
            outs = {}
            for prov in ("reference", provider):
                fill = np.nan if saved else 1.0            # beta == 0: NaN must not leak
                dx = np.full_like(x, fill)
                dz = np.full_like(x, np.nan) if add else None
                ds, db = np.full(scale.shape, fill, np.float32), np.full(scale.shape, fill, np.float32)
                K.get(BX, prov)(x, y if ops != "bn" else None, dy, dz, dx, scale, ds, db, **kw)
                outs[prov] = (dx, ds, db, dz)
            close(outs[provider][0], outs["reference"][0], dtype, 10)
            for a, e in zip(outs[provider][1:3], outs["reference"][1:3]):
                np.testing.assert_allclose(a, e, rtol=1e-4 if dtype == np.float16 else 1e-5, atol=1e-4)
            if add:   # dz is dy where y > 0, else 0, exactly
                np.testing.assert_array_equal(outs[provider][3], np.where(y > 0, dy, 0).astype(dtype))


@pytest.mark.parametrize("provider", K.providers(BX))
def test_fused_equals_batch_norm_then_relu(provider):
    """bn_activation = batch_norm_forward_training then ReLU; its backward = ReLU backward
    then batch_norm_backward (the unfused ops of the same provider family, float64)."""
    x, _, scale, bias, dy = setup("spatial", np.float64, (2, 3, 16, 17))
    y_plain = np.empty_like(x)
    K.get("cudnn.batch_norm_forward_training", "reference")(x, y_plain, scale, bias,
                                                           mode="spatial", epsilon=EPS)
    y = run_forward(provider, x, None, scale, bias, "spatial", "bn_activation")[0]
    np.testing.assert_allclose(y, np.maximum(y_plain, 0), rtol=1e-12, atol=1e-12)
    dx, ds, db = np.empty_like(x), np.empty(scale.shape), np.empty(scale.shape)
    K.get(BX, provider)(x, y, dy, None, dx, scale, ds, db, mode="spatial", epsilon=EPS,
                        ops="bn_activation")
    ex, es, eb = np.empty_like(x), np.empty(scale.shape), np.empty(scale.shape)
    K.get("cudnn.batch_norm_backward", "reference")(x, np.where(y_plain > 0, dy, 0), ex, scale, es, eb,
                                                    mode="spatial", epsilon=EPS)
    for a, e in ((dx, ex), (ds, es), (db, eb)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("provider", K.providers(BX))
def test_in_place_dz_on_dy_and_z_on_y(provider):
    x, z, scale, bias, dy = setup("spatial", np.float32, (2, 3, 16, 17))
    expect = run_forward("reference", x, z, scale, bias, "spatial", "bn_add_activation")[0]
    y = z.copy()                                     # y = z: in place
    K.get(FX, provider)(x, y, y, scale, bias, mode="spatial", epsilon=EPS, ops="bn_add_activation")
    close(y, expect, np.float32, 10)
    dx_ref, dz_ref = np.empty_like(x), np.empty_like(x)
    ds, db = np.empty(scale.shape), np.empty(scale.shape)
    K.get(BX, "reference")(x, y, dy, dz_ref, dx_ref, scale, ds, db, mode="spatial", epsilon=EPS,
                           ops="bn_add_activation")
    g, dx = dy.copy(), np.empty_like(x)              # dz = dy: in place
    K.get(BX, provider)(x, y, g, g, dx, scale, ds, db, mode="spatial", epsilon=EPS,
                        ops="bn_add_activation")
    np.testing.assert_array_equal(g, dz_ref)
    close(dx, dx_ref, np.float32, 10)


@pytest.mark.parametrize("provider", K.providers(FX))
def test_bad_arguments(provider):
    x = np.ones((2, 3, 2, 2), np.float32)
    y, p = np.empty_like(x), np.ones((1, 3, 1, 1), np.float32)
    f, b = K.get(FX, provider), K.get(BX, provider)
    with pytest.raises(ValueError, match="ops"):
        f(x, None, y, p, p, mode="spatial", epsilon=EPS, ops="bn_sigmoid")
    with pytest.raises(ValueError, match="z is not used"):
        f(x, x, y, p, p, mode="spatial", epsilon=EPS, ops="bn_activation")
    with pytest.raises(TypeError, match="z must be a numpy array"):
        f(x, None, y, p, p, mode="spatial", epsilon=EPS, ops="bn_add_activation")
    with pytest.raises(ValueError, match="z must have the shape"):
        f(x, x[:1], y, p, p, mode="spatial", epsilon=EPS, ops="bn_add_activation")
    with pytest.raises(TypeError, match="y must be a numpy array"):
        b(x, None, x, None, y, p, p.copy(), p.copy(), mode="spatial", epsilon=EPS, ops="bn_activation")
    with pytest.raises(ValueError, match="dz is not used"):
        b(x, x, x, y.copy(), y, p, p.copy(), p.copy(), mode="spatial", epsilon=EPS, ops="bn_activation")
    with pytest.raises(TypeError, match="dz must have the dtype"):
        b(x, x, x, y.astype(np.float64), y, p, p.copy(), p.copy(), mode="spatial", epsilon=EPS,
          ops="bn_add_activation")
