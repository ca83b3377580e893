"""cudnn.batch_norm_backward on small spatial planes (the channel-block kernel): many
channels split over several blocks, blending, float16/32/64, against an independent
float64 formula."""

import numpy as np
import pytest

import streamq.kernels as K
from streamq.kernels import _dnn_batchnorm as B

BWD = "cudnn.batch_norm_backward"
TOL = {np.float16: dict(rtol=3e-3, atol=3e-3), np.float32: dict(rtol=2e-5, atol=2e-6),
       np.float64: dict(rtol=1e-11, atol=1e-12)}


def expected(x, dy, scale, eps):
    """dx, dscale, dbias of training-mode batch norm (batch statistics), float64."""
    x, dy, scale = (a.astype(np.float64) for a in (x, dy, scale))
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    m = x.shape[0] * x.shape[2] * x.shape[3]
    dbias = dy.sum(axis=axes)
    dscale = (dy * xhat).sum(axis=axes)
    dx = scale.reshape(1, -1, 1, 1) * inv * (dy - dbias.reshape(1, -1, 1, 1) / m
                                             - xhat * dscale.reshape(1, -1, 1, 1) / m)
    return dx, dscale, dbias


@pytest.mark.parametrize("provider", K.providers(BWD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("saved", [True, False])
def test_small_planes_many_blocks(provider, dtype, saved, monkeypatch):
    # a ~1 KiB block budget forces several channel blocks (and a ragged last one)
    monkeypatch.setattr(B, "_block_channels", lambda x3: 3)
    r = np.random.default_rng(7)
    x = (r.standard_normal((3, 11, 7, 5)) * 2 + 100).astype(dtype)   # offset: cancellation
    dy = r.standard_normal(x.shape).astype(dtype)
    scale = r.standard_normal(11).astype(np.float32)
    eps = 1e-5
    dx_want, ds_want, db_want = expected(x, dy, scale, eps)
    kw = {}
    if saved:
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=(0, 2, 3))
        kw = dict(saved_mean=mean.astype(np.float32),
                  saved_inv_variance=(1 / np.sqrt(x64.var(axis=(0, 2, 3)) + eps)).astype(np.float32))
        # the float32 saved statistics are what the kernel uses: recompute the expectation
        inv = kw["saved_inv_variance"].astype(np.float64).reshape(1, -1, 1, 1)
        mu = kw["saved_mean"].astype(np.float64).reshape(1, -1, 1, 1)
        xhat = (x64 - mu) * inv
        m = x.shape[0] * x.shape[2] * x.shape[3]
        g = dy.astype(np.float64)
        db_want = g.sum(axis=(0, 2, 3))
        ds_want = (g * xhat).sum(axis=(0, 2, 3))
        dx_want = scale.astype(np.float64).reshape(1, -1, 1, 1) * inv * (
            g - db_want.reshape(1, -1, 1, 1) / m - xhat * ds_want.reshape(1, -1, 1, 1) / m)
    dx0 = r.standard_normal(x.shape).astype(dtype)
    dx, ds, db = dx0.copy(), np.full(11, np.nan, np.float32), np.full(11, np.nan, np.float32)
    K.get(BWD, provider)(x, dy, dx, scale, ds, db, mode="spatial", epsilon=eps,
                         alpha_data=2.0, beta_data=-0.5, **kw)
    want = 2.0 * dx_want - 0.5 * dx0.astype(np.float64)
    np.testing.assert_allclose(dx.astype(np.float64), want, **TOL[dtype])
    np.testing.assert_allclose(ds, ds_want, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(db, db_want, rtol=1e-5, atol=1e-5)


def test_block_channels_bounds():
    x3 = np.empty((32, 2048, 49), np.float32)
    bc = B._block_channels(x3)
    assert 1 <= bc <= 2048 and 3 * 32 * bc * 49 * 4 <= 192 << 10
    assert B._block_channels(np.empty((1, 4, 1), np.float64)) == 4
    assert B._block_channels(np.empty((4096, 2, 255), np.float64)) == 1
