"""cuDNN batch normalisation: training forward, inference forward, backward.

``x`` is (N, C, *spatial) (NCHW for 4-D), any strides, float16/32/64; ``y``,
``dy``, ``dx`` match it. Modes:

* ``"spatial"``: one statistic per channel over (N, *spatial); parameter
  arrays (scale, bias, means, variances) have shape (1, C, 1, ..., 1) or (C,).
* ``"per_activation"``: one statistic per (C, *spatial) over N; parameter
  arrays have shape (1, C, *spatial) or (C, *spatial).

Parameter arrays may be any float dtype (cuDNN uses float32 for half/float
data, float64 for double); outputs among them are written in their own dtype.
Statistics use the *biased* variance for normalisation and the *unbiased*
one (times m/(m-1), m = values per statistic) for ``running_var``; training
needs m >= 2. ``save_inv_variance`` holds ``1/sqrt(var_biased + epsilon)``.
Running stats: ``running = (1 - factor)*running + factor*batch`` with
``0 <= factor <= 1``; ``factor == 1`` does not read the old values.

Blending: ``y = alpha*bn(x) + beta*y``; in backward ``dx`` uses
(alpha_data, beta_data) and ``dscale``/``dbias`` use (alpha_param,
beta_param); ``beta == 0`` never reads the output.

numba: statistics in float64. Spatial planes of >= 256 values: per channel,
per-plane two-pass sums (8 independent partial sums, so no fastmath is
needed) merged with Chan's formula, then the affine apply for that channel
while it is still in cache. Per-activation mode and smaller spatial planes:
x viewed as (N, C*M) columns, two-pass column statistics in cache-sized
blocks, merged per channel by the law of total variance, then one affine pass.
Contract: ``docs/kernels/dnn.md``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import blend
from ._dnn_common import quiet, JIT, JIT_PAR, K, check_array, check_choice, check_float, check_like, \
    check_scalar, compute_dtype
from .registry import register

MODES = ("spatial", "per_activation")


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

def _check_x(x, name="x"):
    check_array(name, x)
    check_float(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    return x


def _stat_shapes(mode, x):
    """Accepted parameter shapes: (full, compact) for ``mode``."""
    if mode == "spatial":
        return (1, x.shape[1]) + (1,) * (x.ndim - 2), (x.shape[1],)
    return (1,) + x.shape[1:], x.shape[1:]


def _check_param(name, arr, mode, x, *, required=True, writable=False):
    if arr is None:
        if required:
            raise TypeError(f"{name} must be a numpy array, got None")
        return None
    check_array(name, arr, writable=writable)
    check_float(name, arr)
    full, compact = _stat_shapes(mode, x)
    if arr.shape not in (full, compact):
        raise ValueError(f"{name} must have shape {full} or {compact} for mode {mode!r}, "
                         f"got {arr.shape}")
    return arr


def _flat64(arr):
    return np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)


def _count(mode, x):
    """Values per statistic."""
    return x.shape[0] * (int(np.prod(x.shape[2:])) if mode == "spatial" else 1)


def _store(arr, value):
    """Write a flat float64 statistic into ``arr`` (its own shape and dtype)."""
    np.copyto(arr, value.reshape(arr.shape), casting="unsafe")


def _finish_training(mode, x, mean, var, factor, eps, running_mean, running_var,
                     save_mean, save_inv_variance):
    """Running-stat update and saved stats, shared by both providers (C-sized work)."""
    m = _count(mode, x)
    if running_mean is not None:
        old = 0.0 if factor == 1 else _flat64(running_mean)
        _store(running_mean, (1.0 - factor) * old + factor * mean)
    if running_var is not None:
        old = 0.0 if factor == 1 else _flat64(running_var)
        _store(running_var, (1.0 - factor) * old + factor * var * (m / (m - 1)))
    if save_mean is not None:
        _store(save_mean, mean)
    if save_inv_variance is not None:
        _store(save_inv_variance, 1.0 / np.sqrt(var + eps))


def _check_training(x, y, scale, bias, mode, factor, running_mean, running_var, epsilon,
                    save_mean, save_inv_variance, alpha, beta):
    check_choice("mode", mode, MODES)
    _check_x(x)
    check_like("y", y, x, "x", writable=True)
    _check_param("scale", scale, mode, x)
    _check_param("bias", bias, mode, x)
    for name, arr in (("running_mean", running_mean), ("running_var", running_var),
                      ("save_mean", save_mean), ("save_inv_variance", save_inv_variance)):
        _check_param(name, arr, mode, x, required=False, writable=True)
    factor = check_scalar("exponential_average_factor", factor, minimum=0.0, maximum=1.0)
    eps = check_scalar("epsilon", epsilon, minimum=0.0)
    if _count(mode, x) < 2:
        raise ValueError(f"x must provide at least 2 values per statistic in training "
                         f"(mode {mode!r}, shape {x.shape})")
    return factor, eps, check_scalar("alpha", alpha), check_scalar("beta", beta)


def _check_backward(x, dy, dx, scale, dscale, dbias, mode, epsilon, saved_mean,
                    saved_inv_variance, alphas):
    check_choice("mode", mode, MODES)
    _check_x(x)
    check_like("dy", dy, x, "x")
    check_like("dx", dx, x, "x", writable=True)
    _check_param("scale", scale, mode, x)
    _check_param("dscale", dscale, mode, x, writable=True)
    _check_param("dbias", dbias, mode, x, writable=True)
    _check_param("saved_mean", saved_mean, mode, x, required=False)
    _check_param("saved_inv_variance", saved_inv_variance, mode, x, required=False)
    if (saved_mean is None) != (saved_inv_variance is None):
        raise ValueError("saved_mean and saved_inv_variance must be given together or both None")
    eps = check_scalar("epsilon", epsilon, minimum=0.0)
    if _count(mode, x) < 2:
        raise ValueError(f"x must provide at least 2 values per statistic (mode {mode!r}, "
                         f"shape {x.shape})")
    return eps, [check_scalar(n, v) for n, v in alphas]


# --------------------------------------------------------------------------
# reference (float64 numpy)
# --------------------------------------------------------------------------

def _axes(mode, x):
    return (0,) + tuple(range(2, x.ndim)) if mode == "spatial" else (0,)


def _param64(arr, mode, x):
    """Parameter as float64, shaped to broadcast against x."""
    return np.asarray(arr, dtype=np.float64).reshape(_stat_shapes(mode, x)[0])


@register("cudnn.batch_norm_forward_training", "reference")
@quiet
def batch_norm_forward_training_reference(x, y, scale, bias, *, mode, epsilon,
                                          exponential_average_factor=1.0, running_mean=None,
                                          running_var=None, save_mean=None,
                                          save_inv_variance=None, alpha=1.0, beta=0.0):
    """``y = alpha*(scale*(x-mean)/sqrt(var+eps) + bias) + beta*y`` with batch statistics."""
    factor, eps, alpha, beta = _check_training(
        x, y, scale, bias, mode, exponential_average_factor, running_mean, running_var,
        epsilon, save_mean, save_inv_variance, alpha, beta)
    x64 = x.astype(np.float64)
    axes = _axes(mode, x)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = (x64 - mean) / np.sqrt(var + eps)
    blend(y, _param64(scale, mode, x) * xhat + _param64(bias, mode, x), alpha, beta)
    _finish_training(mode, x, mean.reshape(-1), var.reshape(-1), factor, eps, running_mean,
                     running_var, save_mean, save_inv_variance)


def _check_inference(x, y, scale, bias, mean, var, mode, epsilon, alpha, beta):
    check_choice("mode", mode, MODES)
    _check_x(x)
    check_like("y", y, x, "x", writable=True)
    for name, arr in (("scale", scale), ("bias", bias), ("estimated_mean", mean),
                      ("estimated_variance", var)):
        _check_param(name, arr, mode, x)
    return (check_scalar("epsilon", epsilon, minimum=0.0), check_scalar("alpha", alpha),
            check_scalar("beta", beta))


@register("cudnn.batch_norm_forward_inference", "reference")
@quiet
def batch_norm_forward_inference_reference(x, y, scale, bias, estimated_mean,
                                           estimated_variance, *, mode, epsilon,
                                           alpha=1.0, beta=0.0):
    """``y = alpha*(scale*(x-est_mean)/sqrt(est_var+eps) + bias) + beta*y``."""
    eps, alpha, beta = _check_inference(x, y, scale, bias, estimated_mean, estimated_variance,
                                        mode, epsilon, alpha, beta)
    p = lambda a: _param64(a, mode, x)  # noqa: E731
    value = p(scale) * (x.astype(np.float64) - p(estimated_mean)) \
        / np.sqrt(p(estimated_variance) + eps) + p(bias)
    blend(y, value, alpha, beta)


@register("cudnn.batch_norm_backward", "reference")
@quiet
def batch_norm_backward_reference(x, dy, dx, scale, dscale, dbias, *, mode, epsilon,
                                  saved_mean=None, saved_inv_variance=None, alpha_data=1.0,
                                  beta_data=0.0, alpha_param=1.0, beta_param=0.0):
    """Gradients of training-mode batch norm w.r.t. x, scale and bias.

    Uses ``saved_mean``/``saved_inv_variance`` from the forward pass when
    given, else recomputes the batch statistics from ``x``.
    """
    eps, (a_d, b_d, a_p, b_p) = _check_backward(
        x, dy, dx, scale, dscale, dbias, mode, epsilon, saved_mean, saved_inv_variance,
        [("alpha_data", alpha_data), ("beta_data", beta_data),
         ("alpha_param", alpha_param), ("beta_param", beta_param)])
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    axes = _axes(mode, x)
    if saved_mean is None:
        mean = x64.mean(axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    else:
        mean, inv = _param64(saved_mean, mode, x), _param64(saved_inv_variance, mode, x)
    xhat = (x64 - mean) * inv
    g_bias = dy64.sum(axis=axes, keepdims=True)
    g_scale = (dy64 * xhat).sum(axis=axes, keepdims=True)
    m = _count(mode, x)
    g_x = _param64(scale, mode, x) * inv * (dy64 - g_bias / m - xhat * g_scale / m)
    blend(dx, g_x, a_d, b_d)
    blend(dscale, g_scale.reshape(dscale.shape), a_p, b_p)
    blend(dbias, g_bias.reshape(dbias.shape), a_p, b_p)


# --------------------------------------------------------------------------
# numba
# --------------------------------------------------------------------------

@njit(**JIT)
def _sum8(v):
    """Sum of a 1-D array in float64 with 8 interleaved partial sums."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n8 = v.size - v.size % 8
    for i in range(0, n8, 8):
        s0 += v[i]
        s1 += v[i + 1]
        s2 += v[i + 2]
        s3 += v[i + 3]
        s4 += v[i + 4]
        s5 += v[i + 5]
        s6 += v[i + 6]
        s7 += v[i + 7]
    for i in range(n8, v.size):
        s0 += v[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(**JIT)
def _dot_centered8(u, v, mu):
    """sum((u - mu) * v) in float64, 8 partial sums (``u is v`` gives the M2)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n8 = u.size - u.size % 8
    for i in range(0, n8, 8):
        s0 += (u[i] - mu) * v[i]
        s1 += (u[i + 1] - mu) * v[i + 1]
        s2 += (u[i + 2] - mu) * v[i + 2]
        s3 += (u[i + 3] - mu) * v[i + 3]
        s4 += (u[i + 4] - mu) * v[i + 4]
        s5 += (u[i + 5] - mu) * v[i + 5]
        s6 += (u[i + 6] - mu) * v[i + 6]
        s7 += (u[i + 7] - mu) * v[i + 7]
    for i in range(n8, u.size):
        s0 += (u[i] - mu) * v[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(**JIT)
def _channel_stats(x3, c):
    """Mean and biased variance of x3[:, c, :] (per-plane two-pass, Chan merge)."""
    m = x3.shape[2]
    mean = 0.0
    m2 = 0.0
    cnt = 0.0
    for n in range(x3.shape[0]):
        plane = x3[n, c]
        pm = _sum8(plane) / m
        pm2 = _dot_centered8(plane, plane, pm)
        tot = cnt + m
        delta = pm - mean
        mean += delta * m / tot
        m2 += pm2 + delta * delta * cnt * m / tot
        cnt = tot
    return mean, m2 / cnt


@njit(**JIT)
def _apply_plane(xp, yp, a, b, alpha, beta):
    """yp = alpha*(a*xp + b) + beta*yp over one contiguous run (beta == 0: yp not read).

    Computed in the data dtype, as torch does (float32 lanes are twice as wide).
    """
    a, b, alpha, beta = K(a, yp), K(b, yp), K(alpha, yp), K(beta, yp)
    for i in range(yp.size):
        v = alpha * (a * xp[i] + b)
        if beta != 0:
            v += beta * yp[i]
        yp[i] = v


@njit(**JIT_PAR)
def _spatial_forward(x3, y3, scale, bias, eps, alpha, beta, mean_out, var_out, apply):
    """Per channel: statistics, then (if apply) the normalisation of that channel."""
    for c in prange(x3.shape[1]):
        mean, var = _channel_stats(x3, c)
        mean_out[c] = mean
        var_out[c] = var
        if apply:
            a = scale[c] / np.sqrt(var + eps)
            b = bias[c] - mean * a
            for n in range(x3.shape[0]):
                _apply_plane(x3[n, c], y3[n, c], a, b, alpha, beta)


@njit(**JIT_PAR)
def _affine(x3, y3, a2, b2, alpha, beta):
    """y3[n,k,:] = alpha*(a2[k,:]*x3[n,k,:] + b2[k,:]) + beta*y3; a2/b2 are (K, 1) or (K, M)."""
    n_, k_, m_ = x3.shape
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        if a2.shape[1] == 1:
            _apply_plane(x3[n, k], y3[n, k], a2[k, 0], b2[k, 0], alpha, beta)
        else:
            xp = x3[n, k]
            yp = y3[n, k]
            ap = a2[k]
            bp = b2[k]
            al, be = K(alpha, yp), K(beta, yp)
            for i in range(m_):
                v = al * (ap[i] * xp[i] + bp[i])
                if be != 0:
                    v += be * yp[i]
                yp[i] = v


_BLOCK = 256


@njit(**JIT_PAR)
def _feature_stats(x2, mean_out, var_out):
    """Per column of x2 (N, K): mean and biased variance, two-pass in float64."""
    n_, k_ = x2.shape
    for blk in prange((k_ + _BLOCK - 1) // _BLOCK):
        k0 = blk * _BLOCK
        k1 = min(k0 + _BLOCK, k_)
        s = np.zeros(k1 - k0)
        for n in range(n_):
            for k in range(k0, k1):
                s[k - k0] += x2[n, k]
        s /= n_
        q = np.zeros(k1 - k0)
        for n in range(n_):
            for k in range(k0, k1):
                d = x2[n, k] - s[k - k0]
                q[k - k0] += d * d
        for k in range(k0, k1):
            mean_out[k] = s[k - k0]
            var_out[k] = q[k - k0] / n_


@njit(**JIT_PAR)
def _spatial_backward_sums(x3, dy3, mean, sum_dy, sum_dy_xmu):
    for c in prange(x3.shape[1]):
        s = 0.0
        t = 0.0
        for n in range(x3.shape[0]):
            s += _sum8(dy3[n, c])
            t += _dot_centered8(x3[n, c], dy3[n, c], mean[c])
        sum_dy[c] = s
        sum_dy_xmu[c] = t


@njit(**JIT_PAR)
def _feature_backward_sums(x2, dy2, mean, sum_dy, sum_dy_xmu):
    n_, k_ = x2.shape
    for blk in prange((k_ + _BLOCK - 1) // _BLOCK):
        k0 = blk * _BLOCK
        k1 = min(k0 + _BLOCK, k_)
        for k in range(k0, k1):
            sum_dy[k] = 0.0
            sum_dy_xmu[k] = 0.0
        for n in range(n_):
            for k in range(k0, k1):
                g = np.float64(dy2[n, k])
                sum_dy[k] += g
                sum_dy_xmu[k] += (x2[n, k] - mean[k]) * g


@njit(**JIT_PAR)
def _backward_apply(x3, dy3, dx3, ca2, cb2, cc2, alpha, beta):
    """dx = alpha*(ca*dy + cb*x + cc) + beta*dx; coefficient arrays are (K, 1) or (K, M)."""
    n_, k_, m_ = x3.shape
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        xp = x3[n, k]
        gp = dy3[n, k]
        op = dx3[n, k]
        wide = ca2.shape[1] > 1
        for i in range(m_):
            j = i if wide else 0
            v = alpha * (ca2[k, j] * gp[i] + cb2[k, j] * xp[i] + cc2[k, j])
            if beta != 0:
                v += beta * op[i]
            op[i] = v


def _stage3(mode, arr, *, read=True):
    """(staged, view3) for a kernel; ``view3`` is the (N, K, M) view of ``staged``.

    ``staged`` is ``arr`` itself when it has the compute dtype and the
    reshape needs no copy (kernels then write straight into it); otherwise a
    contiguous compute-dtype copy (left empty when ``read`` is false) that the
    caller copies back. spatial: (N, C, prod(spatial)); per_activation:
    (N, 1, C*prod(spatial)).
    """
    cdt = compute_dtype(arr.dtype)
    shape = (arr.shape[0], arr.shape[1], -1) if mode == "spatial" else (arr.shape[0], 1, -1)
    if arr.dtype == cdt:
        try:
            return arr, np.reshape(arr, shape, copy=False)
        except ValueError:
            pass
    staged = np.ascontiguousarray(arr, dtype=cdt) if read else np.empty(arr.shape, dtype=cdt)
    return staged, staged.reshape(shape)


# Spatial planes smaller than this many values are processed like per-activation
# columns: per-plane kernels would spend their time on loop overhead and on
# N strided visits per channel, while column kernels stream x in order.
_SMALL_PLANE = 256


def _layout(mode, x):
    """('planes', 1): per-channel kernels on the (N, C, M) view (spatial, M >= _SMALL_PLANE);
    ('columns', rep): column kernels on the (N, 1, L) view, each statistic merging
    ``rep`` adjacent columns (rep = M for small spatial planes, 1 per activation)."""
    m = int(np.prod(x.shape[2:]))
    if mode == "spatial" and m >= _SMALL_PLANE:
        return "planes", 1
    return "columns", (m if mode == "spatial" else 1)


def _coef(layout, rep, *vectors, dtype=np.float64):
    """Per-statistic vectors shaped for the kernels: (K, 1) per plane, or one (1, L)
    row with each value repeated over its ``rep`` columns; cast to ``dtype`` (the
    forward affine runs in the data dtype, the backward in float64)."""
    if layout == "planes":
        return [np.ascontiguousarray(v, dtype=dtype).reshape(-1, 1) for v in vectors]
    return [np.repeat(v, rep).astype(dtype, copy=False).reshape(1, -1) for v in vectors]


def _writeback(dst, staged):
    if staged is not dst:
        np.copyto(dst, staged, casting="unsafe")


def _stats_numba(layout, rep, x3):
    """Batch mean and biased variance (flat float64) of every statistic."""
    if layout == "planes":
        mean, var = np.empty(x3.shape[1]), np.empty(x3.shape[1])
        _spatial_forward(x3, x3, mean, mean, 0.0, 1.0, 0.0, mean, var, False)
        return mean, var
    mean, var = np.empty(x3.shape[2]), np.empty(x3.shape[2])
    _feature_stats(x3[:, 0, :], mean, var)
    if rep == 1:
        return mean, var
    # Merge each channel's rep columns (N values each): total variance = mean of
    # the column variances + variance of the column means.
    mc, vc = mean.reshape(-1, rep), var.reshape(-1, rep)
    cmean = mc.mean(axis=1)
    return cmean, vc.mean(axis=1) + ((mc - cmean[:, None]) ** 2).mean(axis=1)


@register("cudnn.batch_norm_forward_training", "numba")
@quiet
def batch_norm_forward_training_numba(x, y, scale, bias, *, mode, epsilon,
                                      exponential_average_factor=1.0, running_mean=None,
                                      running_var=None, save_mean=None, save_inv_variance=None,
                                      alpha=1.0, beta=0.0):
    """Same contract as the reference; big spatial planes fuse stats and apply per channel."""
    factor, eps, alpha, beta = _check_training(
        x, y, scale, bias, mode, exponential_average_factor, running_mean, running_var,
        epsilon, save_mean, save_inv_variance, alpha, beta)
    layout, rep = _layout(mode, x)
    view = "spatial" if layout == "planes" else "per_activation"
    _, x3 = _stage3(view, x)
    ys, y3 = _stage3(view, y, read=beta != 0)
    sc, bi = _flat64(scale), _flat64(bias)
    if layout == "planes":
        mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
        _spatial_forward(x3, y3, sc, bi, eps, alpha, beta, mean, var, True)
    else:
        mean, var = _stats_numba(layout, rep, x3)
        a = sc / np.sqrt(var + eps)
        _affine(x3, y3, *_coef(layout, rep, a, bi - mean * a, dtype=x3.dtype), alpha, beta)
    _writeback(y, ys)
    _finish_training(mode, x, mean, var, factor, eps, running_mean, running_var,
                     save_mean, save_inv_variance)


@register("cudnn.batch_norm_forward_inference", "numba")
@quiet
def batch_norm_forward_inference_numba(x, y, scale, bias, estimated_mean, estimated_variance,
                                       *, mode, epsilon, alpha=1.0, beta=0.0):
    """Same contract as the reference; one parallel affine pass."""
    eps, alpha, beta = _check_inference(x, y, scale, bias, estimated_mean, estimated_variance,
                                        mode, epsilon, alpha, beta)
    layout, rep = _layout(mode, x)
    view = "spatial" if layout == "planes" else "per_activation"
    _, x3 = _stage3(view, x)
    ys, y3 = _stage3(view, y, read=beta != 0)
    a = _flat64(scale) / np.sqrt(_flat64(estimated_variance) + eps)
    _affine(x3, y3, *_coef(layout, rep, a, _flat64(bias) - _flat64(estimated_mean) * a,
                           dtype=x3.dtype), alpha, beta)
    _writeback(y, ys)


@register("cudnn.batch_norm_backward", "numba")
@quiet
def batch_norm_backward_numba(x, dy, dx, scale, dscale, dbias, *, mode, epsilon,
                              saved_mean=None, saved_inv_variance=None, alpha_data=1.0,
                              beta_data=0.0, alpha_param=1.0, beta_param=0.0):
    """Same contract as the reference; two parallel passes (sums, then dx)."""
    eps, (a_d, b_d, a_p, b_p) = _check_backward(
        x, dy, dx, scale, dscale, dbias, mode, epsilon, saved_mean, saved_inv_variance,
        [("alpha_data", alpha_data), ("beta_data", beta_data),
         ("alpha_param", alpha_param), ("beta_param", beta_param)])
    layout, rep = _layout(mode, x)
    view = "spatial" if layout == "planes" else "per_activation"
    _, x3 = _stage3(view, x)
    _, g3 = _stage3(view, dy)
    dxs, o3 = _stage3(view, dx, read=b_d != 0)
    if saved_mean is None:
        mean, var = _stats_numba(layout, rep, x3)
        inv = 1.0 / np.sqrt(var + eps)
    else:
        mean, inv = _flat64(saved_mean), _flat64(saved_inv_variance)
    if layout == "planes":
        sum_dy, sum_dy_xmu = np.empty_like(mean), np.empty_like(mean)
        _spatial_backward_sums(x3, g3, mean, sum_dy, sum_dy_xmu)
    else:
        s1, s2 = np.empty(x3.shape[2]), np.empty(x3.shape[2])
        _feature_backward_sums(x3[:, 0, :], g3[:, 0, :], np.repeat(mean, rep), s1, s2)
        sum_dy, sum_dy_xmu = s1.reshape(-1, rep).sum(axis=1), s2.reshape(-1, rep).sum(axis=1)
    m = _count(mode, x)
    g_scale = sum_dy_xmu * inv
    ca = _flat64(scale) * inv                   # dx = ca*dy + cb*x + cc
    cb = -ca * inv * inv * sum_dy_xmu / m
    cc = -ca * sum_dy / m - cb * mean
    _backward_apply(x3, g3, o3, *_coef(layout, rep, ca, cb, cc), a_d, b_d)
    _writeback(dx, dxs)
    blend(dscale, g_scale.reshape(dscale.shape), a_p, b_p)
    blend(dbias, sum_dy.reshape(dbias.shape), a_p, b_p)
