"""cuDNN batch normalisation: training forward, inference forward, backward, and the
fused forms (batch norm, then optionally add z, then ReLU) of cuDNN's *Ex calls.

``x`` is (N, C, *spatial) (NCHW for 4-D), any strides, float16/32/64; ``y``,
``z``, ``dy``, ``dz``, ``dx`` match it. Modes:

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

Fused ops (``ops``, cuDNN's cudnnBatchNormOps_t): ``y = act(bn(x) [+ z])``;
the backward takes dy of the activation's output ``y`` and masks it with
``y > 0`` (``dz`` receives the masked dy).

Blending: ``y = alpha*result + beta*y``; in backward ``dx`` uses
(alpha_data, beta_data) and ``dscale``/``dbias`` use (alpha_param,
beta_param); ``beta == 0`` never reads the output.

numba, spatial mode: one channel per parallel task -- statistics (per-plane
two-pass sums in float64, merged with Chan's formula), then the channel's
output while it is still in cache; the backward likewise computes the two
gradient sums of a channel, then its dx from cache. Per-activation mode:
column statistics in cache-sized blocks, then one affine pass.
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
#: cuDNN's cudnnBatchNormOps_t: y = bn(x), relu(bn(x)), relu(bn(x) + z).
OPS = ("bn", "bn_activation", "bn_add_activation")


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


def _check_ops(ops, x, **arrays):
    """Validate ``ops`` and the arrays only some ops use (``y``: the activation output,
    read by the backward of an activation; ``z``/``dz``: the added tensor and its
    gradient); an array ``ops`` does not use must be None. Returns ``OPS.index(ops)``."""
    check_choice("ops", ops, OPS)
    uses = {"y": ops != "bn", "z": ops == "bn_add_activation", "dz": ops == "bn_add_activation"}
    for name, arr in arrays.items():
        if not uses[name]:
            if arr is not None:
                raise ValueError(f"{name} is not used with ops={ops!r} and must be None")
            continue
        check_like(name, arr, x, "x", writable=name == "dz")
    return OPS.index(ops)


# --------------------------------------------------------------------------
# reference (float64 numpy)
# --------------------------------------------------------------------------

def _axes(mode, x):
    return (0,) + tuple(range(2, x.ndim)) if mode == "spatial" else (0,)


def _param64(arr, mode, x):
    """Parameter as float64, shaped to broadcast against x."""
    return np.asarray(arr, dtype=np.float64).reshape(_stat_shapes(mode, x)[0])


def _relu64(v):
    """max(v, 0) that keeps NaN (cuDNN's ReLU propagates it)."""
    return np.where(v < 0, 0.0, v)


@register("cudnn.batch_norm_forward_training_ex", "reference")
@quiet
def batch_norm_forward_training_ex_reference(x, z, y, scale, bias, *, mode, epsilon, ops="bn",
                                             exponential_average_factor=1.0, running_mean=None,
                                             running_var=None, save_mean=None,
                                             save_inv_variance=None, alpha=1.0, beta=0.0):
    """``y = alpha*act(bn(x) [+ z]) + beta*y`` with batch statistics (cuDNN's bnOps:
    ``"bn"`` no activation, ``"bn_activation"`` ReLU, ``"bn_add_activation"`` add z then ReLU)."""
    factor, eps, alpha, beta = _check_training(
        x, y, scale, bias, mode, exponential_average_factor, running_mean, running_var,
        epsilon, save_mean, save_inv_variance, alpha, beta)
    opi = _check_ops(ops, x, z=z)
    x64 = x.astype(np.float64)
    axes = _axes(mode, x)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    value = _param64(scale, mode, x) * (x64 - mean) / np.sqrt(var + eps) + _param64(bias, mode, x)
    if opi == 2:
        value = value + z.astype(np.float64)
    blend(y, _relu64(value) if opi else value, alpha, beta)
    _finish_training(mode, x, mean.reshape(-1), var.reshape(-1), factor, eps, running_mean,
                     running_var, save_mean, save_inv_variance)


@register("cudnn.batch_norm_forward_training", "reference")
def batch_norm_forward_training_reference(x, y, scale, bias, *, mode, epsilon,
                                          exponential_average_factor=1.0, running_mean=None,
                                          running_var=None, save_mean=None,
                                          save_inv_variance=None, alpha=1.0, beta=0.0):
    """``y = alpha*(scale*(x-mean)/sqrt(var+eps) + bias) + beta*y`` with batch statistics."""
    batch_norm_forward_training_ex_reference(
        x, None, y, scale, bias, mode=mode, epsilon=epsilon,
        exponential_average_factor=exponential_average_factor, running_mean=running_mean,
        running_var=running_var, save_mean=save_mean, save_inv_variance=save_inv_variance,
        alpha=alpha, beta=beta)


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


@register("cudnn.batch_norm_backward_ex", "reference")
@quiet
def batch_norm_backward_ex_reference(x, y, dy, dz, dx, scale, dscale, dbias, *, mode, epsilon,
                                     ops="bn", saved_mean=None, saved_inv_variance=None,
                                     alpha_data=1.0, beta_data=0.0, alpha_param=1.0,
                                     beta_param=0.0):
    """Gradients of :func:`batch_norm_forward_training_ex_reference` w.r.t. x, scale, bias
    (and z): ``dy`` is the gradient of the activation's output ``y``; with an activation
    the ReLU passes ``g = dy`` where ``y > 0`` (else 0), ``dz = g`` (written, not blended)
    and batch norm's gradient is taken of ``g``.

    Uses ``saved_mean``/``saved_inv_variance`` from the forward pass when
    given, else recomputes the batch statistics from ``x``.
    """
    eps, (a_d, b_d, a_p, b_p) = _check_backward(
        x, dy, dx, scale, dscale, dbias, mode, epsilon, saved_mean, saved_inv_variance,
        [("alpha_data", alpha_data), ("beta_data", beta_data),
         ("alpha_param", alpha_param), ("beta_param", beta_param)])
    opi = _check_ops(ops, x, y=y, dz=dz)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    if opi:
        dy64 = np.where(y.astype(np.float64) > 0, dy64, 0.0)
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
    if opi == 2:
        np.copyto(dz, dy64, casting="unsafe")
    blend(dx, g_x, a_d, b_d)
    blend(dscale, g_scale.reshape(dscale.shape), a_p, b_p)
    blend(dbias, g_bias.reshape(dbias.shape), a_p, b_p)


@register("cudnn.batch_norm_backward", "reference")
def batch_norm_backward_reference(x, dy, dx, scale, dscale, dbias, *, mode, epsilon,
                                  saved_mean=None, saved_inv_variance=None, alpha_data=1.0,
                                  beta_data=0.0, alpha_param=1.0, beta_param=0.0):
    """Gradients of training-mode batch norm w.r.t. x, scale and bias.

    Uses ``saved_mean``/``saved_inv_variance`` from the forward pass when
    given, else recomputes the batch statistics from ``x``.
    """
    batch_norm_backward_ex_reference(
        x, None, dy, None, dx, scale, dscale, dbias, mode=mode, epsilon=epsilon,
        saved_mean=saved_mean, saved_inv_variance=saved_inv_variance, alpha_data=alpha_data,
        beta_data=beta_data, alpha_param=alpha_param, beta_param=beta_param)


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


# Reductions may be reassociated (fastmath "reassoc" + "contract" only: NaN and inf
# still propagate): without it LLVM keeps each float64 sum a serial scalar chain,
# with it the loops run 4 lanes wide. Only the summation order changes.
RJIT = dict(JIT, fastmath={"reassoc", "contract"})


@njit(**RJIT)
def _plane_moments(v):
    """(mean, sum of squared deviations) of a 1-D array, two-pass in float64."""
    s = 0.0
    for i in range(v.size):
        s += v[i]
    mu = s / v.size
    q = 0.0
    for i in range(v.size):
        d = v[i] - mu
        q += d * d
    return mu, q


@njit(**RJIT)
def _plane_grad_sums(xp, gp, mu):
    """(sum(g), sum((x - mu) * g)) over one plane in float64."""
    s = 0.0
    t = 0.0
    for i in range(gp.size):
        g = np.float64(gp[i])
        s += g
        t += (xp[i] - mu) * g
    return s, t


@njit(**RJIT)
def _plane_grad_sums_relu(xp, gp, yp, mu):
    """As _plane_grad_sums with g = dy where the ReLU output y > 0, else 0."""
    s = 0.0
    t = 0.0
    zero = K(0.0, gp)
    for i in range(gp.size):
        g = np.float64(gp[i] if yp[i] > zero else zero)
        s += g
        t += (xp[i] - mu) * g
    return s, t


@njit(**JIT)
def _channel_stats(x3, c):
    """Mean and biased variance of x3[:, c, :] (per-plane two-pass, Chan merge)."""
    m = x3.shape[2]
    mean = 0.0
    m2 = 0.0
    cnt = 0.0
    for n in range(x3.shape[0]):
        pm, pm2 = _plane_moments(x3[n, c])
        tot = cnt + m
        delta = pm - mean
        mean += delta * m / tot
        m2 += pm2 + delta * delta * cnt * m / tot
        cnt = tot
    return mean, m2 / cnt


@njit(**JIT)
def _apply_plane(xp, zp, yp, a, b, alpha, beta, ops):
    """yp = alpha*act(a*xp + b [+ zp]) + beta*yp over one contiguous run (beta == 0:
    yp not read). ops 0: no activation; 1: ReLU; 2: add zp, then ReLU.

    Computed in the data dtype, as torch does (float32 lanes are twice as wide).
    """
    a, b, alpha, beta = K(a, yp), K(b, yp), K(alpha, yp), K(beta, yp)
    zero = K(0.0, yp)
    if ops == 0:
        for i in range(yp.size):
            v = alpha * (a * xp[i] + b)
            if beta != 0:
                v += beta * yp[i]
            yp[i] = v
    elif ops == 1:
        for i in range(yp.size):
            v = a * xp[i] + b
            v = alpha * (zero if v < zero else v)       # NaN stays NaN
            if beta != 0:
                v += beta * yp[i]
            yp[i] = v
    else:
        for i in range(yp.size):
            v = a * xp[i] + b + zp[i]
            v = alpha * (zero if v < zero else v)
            if beta != 0:
                v += beta * yp[i]
            yp[i] = v


@njit(**JIT_PAR)
def _spatial_forward(x3, z3, y3, scale, bias, eps, alpha, beta, mean_out, var_out, ops):
    """Per channel: statistics, then (ops >= 0) the normalisation of that channel while
    it is still in cache; ops < 0 computes the statistics only."""
    for c in prange(x3.shape[1]):
        mean, var = _channel_stats(x3, c)
        mean_out[c] = mean
        var_out[c] = var
        if ops >= 0:
            a = scale[c] / np.sqrt(var + eps)
            b = bias[c] - mean * a
            for n in range(x3.shape[0]):
                _apply_plane(x3[n, c], z3[n, c], y3[n, c], a, b, alpha, beta, ops)


@njit(**JIT)
def _backward_plane(xp, gp, yp, dzp, op, ca, cb, cc, mh, ml, alpha, beta, ops):
    """op = alpha*(ca*g + cb*(x - mean) + cc) + beta*op in the data dtype, with g = dy
    (ops 0) or dy masked by yp > 0 (ops 1; ops 2 also stores g into dzp). The mean
    is split into mh + ml (data dtype) so that x - mean loses nothing to cancellation."""
    ca, cb, cc, mh, ml = K(ca, op), K(cb, op), K(cc, op), K(mh, op), K(ml, op)
    alpha, beta = K(alpha, op), K(beta, op)
    zero = K(0.0, op)
    if ops == 0:
        for i in range(op.size):
            v = alpha * (ca * gp[i] + cb * ((xp[i] - mh) - ml) + cc)
            if beta != 0:
                v += beta * op[i]
            op[i] = v
    elif ops == 1:
        for i in range(op.size):
            g = gp[i] if yp[i] > zero else zero
            v = alpha * (ca * g + cb * ((xp[i] - mh) - ml) + cc)
            if beta != 0:
                v += beta * op[i]
            op[i] = v
    else:
        for i in range(op.size):
            g = gp[i] if yp[i] > zero else zero
            dzp[i] = g
            v = alpha * (ca * g + cb * ((xp[i] - mh) - ml) + cc)
            if beta != 0:
                v += beta * op[i]
            op[i] = v


@njit(**JIT_PAR)
def _spatial_backward(x3, y3, g3, dz3, o3, mean, inv, scale, alpha, beta, sum_g, sum_gx, ops):
    """Per channel: the two gradient sums over its N planes, then dx (and dz) of those
    planes while they are still in cache: x and dy are read from memory once."""
    m = x3.shape[0] * x3.shape[2]
    for c in prange(x3.shape[1]):
        mu = mean[c]
        s = 0.0
        t = 0.0
        for n in range(x3.shape[0]):
            if ops == 0:
                ds, dt = _plane_grad_sums(x3[n, c], g3[n, c], mu)
            else:
                ds, dt = _plane_grad_sums_relu(x3[n, c], g3[n, c], y3[n, c], mu)
            s += ds
            t += dt
        sum_g[c] = s
        sum_gx[c] = t
        iv = inv[c]
        ca = scale[c] * iv                   # dx = ca*g + cb*(x - mean) + cc
        cb = -ca * iv * iv * t / m
        cc = -ca * s / m
        mh = K(mu, o3)
        ml = mu - np.float64(mh)
        for n in range(x3.shape[0]):
            _backward_plane(x3[n, c], g3[n, c], y3[n, c], dz3[n, c], o3[n, c], ca, cb, cc,
                            mh, ml, alpha, beta, ops)


@njit(**RJIT)
def _block_grad_sums(x3, g3, mean, c0, c1, sum_g, sum_gx):
    """sum_g[c] = sum(g), sum_gx[c] = sum((x - mean) * g) over x3[:, c], g3[:, c] for the
    channels c in [c0, c1), walking each sample's contiguous run of those channels."""
    for c in range(c0, c1):
        sum_g[c] = 0.0
        sum_gx[c] = 0.0
    for n in range(x3.shape[0]):
        for c in range(c0, c1):
            mu = mean[c]
            s = 0.0
            t = 0.0
            for i in range(x3.shape[2]):        # 3-d indexing: a slice per plane costs more
                g = np.float64(g3[n, c, i])      # than these short loops
                s += g
                t += (x3[n, c, i] - mu) * g
            sum_g[c] += s
            sum_gx[c] += t


@njit(**JIT)
def _block_apply(x3, g3, o3, coef, c0, c1, alpha, beta):
    """o3[:, c] = alpha*(ca*g + cb*((x - mh) - ml) + cc) + beta*o3[:, c] for c in [c0, c1),
    in the data dtype; coef[c] = (ca, cb, cc, mh, ml) already in that dtype."""
    al, be = K(alpha, o3), K(beta, o3)
    for n in range(x3.shape[0]):
        for c in range(c0, c1):
            ca, cb, cc, mh, ml = coef[c, 0], coef[c, 1], coef[c, 2], coef[c, 3], coef[c, 4]
            if beta == 0:
                for i in range(x3.shape[2]):
                    o3[n, c, i] = al * (ca * g3[n, c, i] + cb * ((x3[n, c, i] - mh) - ml) + cc)
            else:
                for i in range(x3.shape[2]):
                    o3[n, c, i] = (al * (ca * g3[n, c, i] + cb * ((x3[n, c, i] - mh) - ml) + cc)
                                   + be * o3[n, c, i])


@njit(**JIT_PAR)
def _spatial_backward_blocks(x3, g3, o3, mean, inv, scale, alpha, beta, sum_g, sum_gx, bc):
    """_spatial_backward (ops 0) for small planes: parallel over blocks of ``bc`` channels,
    each sample's run of a block's channels read contiguously (a per-channel walk would
    hop between N planes of a few cache lines each), sums then dx from cache."""
    n_, c_, m_ = x3.shape
    m = n_ * m_
    coef = np.empty((c_, 5), o3.dtype)
    for b in prange((c_ + bc - 1) // bc):
        c0, c1 = b * bc, min(c_, (b + 1) * bc)
        _block_grad_sums(x3, g3, mean, c0, c1, sum_g, sum_gx)
        for c in range(c0, c1):
            iv, mu = inv[c], mean[c]
            ca = scale[c] * iv                   # dx = ca*g + cb*(x - mean) + cc
            mh = K(mu, o3)
            coef[c, 0] = ca
            coef[c, 1] = -ca * iv * iv * sum_gx[c] / m
            coef[c, 2] = -ca * sum_g[c] / m
            coef[c, 3] = mh
            coef[c, 4] = mu - np.float64(mh)
        _block_apply(x3, g3, o3, coef, c0, c1, alpha, beta)


@njit(**JIT_PAR)
def _affine(x3, y3, a2, ch2, cl2, b2, alpha, beta):
    """y3[n,k,:] = alpha*(a2*(x3 - c) + b2) + beta*y3 with c = ch2 + cl2 (the centre split
    into two data-dtype parts, so that x - c loses nothing to cancellation); the rows
    are (K, 1) (then computed as a*x + (b - a*c)) or (K, M)."""
    n_, k_, m_ = x3.shape
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        if a2.shape[1] == 1:
            a = np.float64(a2[k, 0])
            c = np.float64(ch2[k, 0]) + np.float64(cl2[k, 0])
            _apply_plane(x3[n, k], x3[n, k], y3[n, k], a, np.float64(b2[k, 0]) - a * c,
                         alpha, beta, 0)
        else:
            xp = x3[n, k]
            yp = y3[n, k]
            ap = a2[k]
            hp = ch2[k]
            lp = cl2[k]
            bp = b2[k]
            al, be = K(alpha, yp), K(beta, yp)
            for i in range(m_):
                v = al * (ap[i] * ((xp[i] - hp[i]) - lp[i]) + bp[i])
                if be != 0:
                    v += be * yp[i]
                yp[i] = v


@njit(**JIT_PAR)
def _affine_small(x3, y3, coef, alpha, beta, bc):
    """_affine's (1, L) column form for small spatial planes, with per-channel coefficients
    coef[c] = (a, ch, cl, b) (data dtype) instead of rows repeated over every column:
    y3 = alpha*(a*((x3 - ch) - cl) + b) + beta*y3, the same arithmetic, parallel over
    runs of ``bc`` channels of one sample."""
    n_, c_, m_ = x3.shape
    nb = (c_ + bc - 1) // bc
    al, be = K(alpha, y3), K(beta, y3)
    for t in prange(n_ * nb):
        n = t // nb
        c0 = (t % nb) * bc
        for c in range(c0, min(c_, c0 + bc)):
            a, h, lo, b = coef[c, 0], coef[c, 1], coef[c, 2], coef[c, 3]
            if beta == 0:
                for i in range(m_):
                    y3[n, c, i] = al * (a * ((x3[n, c, i] - h) - lo) + b)
            else:
                for i in range(m_):
                    y3[n, c, i] = al * (a * ((x3[n, c, i] - h) - lo) + b) + be * y3[n, c, i]


def _affine_coef(layout, rep, a, centre, b, dtype):
    """The four coefficient rows of :func:`_affine` for per-statistic a, centre, b."""
    ch = centre.astype(dtype)
    cl = centre - ch.astype(np.float64)
    return _coef(layout, rep, a, ch, cl, b, dtype=dtype)


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


# Inference (one affine pass, no statistics): spatial planes smaller than this many
# values are processed like per-activation columns, streaming x in order instead of
# short per-plane loops. (Training and backward always go per channel: their
# statistics make each channel's second pass a cache hit.)
_SMALL_PLANE = 256


def _block_channels(x3) -> int:
    """Channels per task of the small-plane backward: a block's x, dy and dx (N*bc*M
    values each) stay within ~192 KiB, so its second pass runs from L2."""
    n, c, m = x3.shape
    per_channel = 3 * n * m * x3.dtype.itemsize
    return max(1, min(c, (192 << 10) // max(per_channel, 1)))


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
    forward affine runs in the data dtype, the per-activation backward in float64)."""
    if layout == "planes":
        return [np.ascontiguousarray(v, dtype=dtype).reshape(-1, 1) for v in vectors]
    return [np.repeat(v, rep).astype(dtype, copy=False).reshape(1, -1) for v in vectors]


def _writeback(dst, staged):
    if staged is not dst:
        np.copyto(dst, staged, casting="unsafe")


def _stats_numba(mode, x3):
    """Batch mean and biased variance (flat float64) of every statistic; ``x3`` is the
    (N, C, M) view (spatial) or the (N, 1, L) view (per activation)."""
    if mode == "spatial":
        mean, var = np.empty(x3.shape[1]), np.empty(x3.shape[1])
        _spatial_forward(x3, x3, x3, mean, mean, 0.0, 1.0, 0.0, mean, var, -1)
        return mean, var
    mean, var = np.empty(x3.shape[2]), np.empty(x3.shape[2])
    _feature_stats(x3[:, 0, :], mean, var)
    return mean, var


@register("cudnn.batch_norm_forward_training_ex", "numba")
@quiet
def batch_norm_forward_training_ex_numba(x, z, y, scale, bias, *, mode, epsilon, ops="bn",
                                         exponential_average_factor=1.0, running_mean=None,
                                         running_var=None, save_mean=None,
                                         save_inv_variance=None, alpha=1.0, beta=0.0):
    """Same contract as the reference. Spatial: per channel, statistics then the fused
    affine + add + ReLU output while the channel is in cache (x read from memory once)."""
    factor, eps, alpha, beta = _check_training(
        x, y, scale, bias, mode, exponential_average_factor, running_mean, running_var,
        epsilon, save_mean, save_inv_variance, alpha, beta)
    opi = _check_ops(ops, x, z=z)
    _, x3 = _stage3(mode, x)
    z3 = _stage3(mode, z)[1] if z is not None else x3
    ys, y3 = _stage3(mode, y, read=beta != 0)
    sc, bi = _flat64(scale), _flat64(bias)
    if mode == "spatial":
        mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
        _spatial_forward(x3, z3, y3, sc, bi, eps, alpha, beta, mean, var, opi)
    else:
        mean, var = _stats_numba(mode, x3)
        coef = _affine_coef("columns", 1, sc / np.sqrt(var + eps), mean, bi, x3.dtype)
        if opi == 0:
            _affine(x3, y3, *coef, alpha, beta)
        else:       # per activation (not a cuDNN fast path): affine, then add + ReLU
            t = np.empty(x3.shape, x3.dtype)
            _affine(x3, t, *coef, 1.0, 0.0)
            if opi == 2:
                t += z3
            t[t < 0] = 0
            blend(y3, t, alpha, beta)
    _writeback(y, ys)
    _finish_training(mode, x, mean, var, factor, eps, running_mean, running_var,
                     save_mean, save_inv_variance)


@register("cudnn.batch_norm_forward_training", "numba")
def batch_norm_forward_training_numba(x, y, scale, bias, *, mode, epsilon,
                                      exponential_average_factor=1.0, running_mean=None,
                                      running_var=None, save_mean=None, save_inv_variance=None,
                                      alpha=1.0, beta=0.0):
    """Same contract as the reference; spatial mode fuses stats and apply per channel."""
    batch_norm_forward_training_ex_numba(
        x, None, y, scale, bias, mode=mode, epsilon=epsilon,
        exponential_average_factor=exponential_average_factor, running_mean=running_mean,
        running_var=running_var, save_mean=save_mean, save_inv_variance=save_inv_variance,
        alpha=alpha, beta=beta)


@register("cudnn.batch_norm_forward_inference", "numba")
@quiet
def batch_norm_forward_inference_numba(x, y, scale, bias, estimated_mean, estimated_variance,
                                       *, mode, epsilon, alpha=1.0, beta=0.0):
    """Same contract as the reference; one parallel affine pass."""
    eps, alpha, beta = _check_inference(x, y, scale, bias, estimated_mean, estimated_variance,
                                        mode, epsilon, alpha, beta)
    layout, rep = _layout(mode, x)
    view = "spatial" if layout == "planes" or mode == "spatial" else "per_activation"
    _, x3 = _stage3(view, x)
    ys, y3 = _stage3(view, y, read=beta != 0)
    a = _flat64(scale) / np.sqrt(_flat64(estimated_variance) + eps)
    if layout == "columns" and mode == "spatial":      # small planes: per-channel coefficients
        coef = np.stack([c.reshape(-1) for c in _affine_coef(
            "planes", 1, a, _flat64(estimated_mean), _flat64(bias), x3.dtype)], axis=1)
        _affine_small(x3, y3, coef, alpha, beta, max(1, 4096 // max(x3.shape[2], 1)))
    else:
        _affine(x3, y3, *_affine_coef(layout, rep, a, _flat64(estimated_mean), _flat64(bias),
                                      x3.dtype), alpha, beta)
    _writeback(y, ys)


@register("cudnn.batch_norm_backward_ex", "numba")
@quiet
def batch_norm_backward_ex_numba(x, y, dy, dz, dx, scale, dscale, dbias, *, mode, epsilon,
                                 ops="bn", saved_mean=None, saved_inv_variance=None,
                                 alpha_data=1.0, beta_data=0.0, alpha_param=1.0, beta_param=0.0):
    """Same contract as the reference. Spatial: per channel, the two sums of the (masked)
    gradient, then dx (and dz) while the channel is in cache."""
    eps, (a_d, b_d, a_p, b_p) = _check_backward(
        x, dy, dx, scale, dscale, dbias, mode, epsilon, saved_mean, saved_inv_variance,
        [("alpha_data", alpha_data), ("beta_data", beta_data),
         ("alpha_param", alpha_param), ("beta_param", beta_param)])
    opi = _check_ops(ops, x, y=y, dz=dz)
    _, x3 = _stage3(mode, x)
    _, g3 = _stage3(mode, dy)
    y3 = _stage3(mode, y)[1] if y is not None else x3
    dxs, o3 = _stage3(mode, dx, read=b_d != 0)
    dzs, dz3 = _stage3(mode, dz, read=False) if dz is not None else (None, o3)
    if saved_mean is None:
        mean, var = _stats_numba(mode, x3)
        inv = 1.0 / np.sqrt(var + eps)
    else:
        mean, inv = _flat64(saved_mean), _flat64(saved_inv_variance)
    if mode == "spatial" and opi == 0 and x3.shape[2] < _SMALL_PLANE:
        sum_g, sum_gx = np.empty_like(mean), np.empty_like(mean)
        _spatial_backward_blocks(x3, g3, o3, mean, inv, _flat64(scale), a_d, b_d, sum_g, sum_gx,
                                 _block_channels(x3))
    elif mode == "spatial":
        sum_g, sum_gx = np.empty_like(mean), np.empty_like(mean)
        _spatial_backward(x3, y3, g3, dz3, o3, mean, inv, _flat64(scale), a_d, b_d, sum_g,
                          sum_gx, opi)
    else:
        if opi:             # per activation (not a cuDNN fast path): mask first
            g3 = np.where(y3 > 0, g3, g3.dtype.type(0))
            if opi == 2:
                np.copyto(dz3, g3)
        sum_g, sum_gx = np.empty(x3.shape[2]), np.empty(x3.shape[2])
        _feature_backward_sums(x3[:, 0, :], g3[:, 0, :], mean, sum_g, sum_gx)
        m = _count(mode, x)
        ca = _flat64(scale) * inv                   # dx = ca*dy + cb*x + cc
        cb = -ca * inv * inv * sum_gx / m
        cc = -ca * sum_g / m - cb * mean
        _backward_apply(x3, g3, o3, *_coef("columns", 1, ca, cb, cc), a_d, b_d)
    _writeback(dx, dxs)
    if dz is not None:
        _writeback(dz, dzs)
    blend(dscale, (sum_gx * inv).reshape(dscale.shape), a_p, b_p)
    blend(dbias, sum_g.reshape(dbias.shape), a_p, b_p)


@register("cudnn.batch_norm_backward", "numba")
def batch_norm_backward_numba(x, dy, dx, scale, dscale, dbias, *, mode, epsilon,
                              saved_mean=None, saved_inv_variance=None, alpha_data=1.0,
                              beta_data=0.0, alpha_param=1.0, beta_param=0.0):
    """Same contract as the reference; two passes over each channel (sums, then dx), the
    second from cache."""
    batch_norm_backward_ex_numba(
        x, None, dy, None, dx, scale, dscale, dbias, mode=mode, epsilon=epsilon,
        saved_mean=saved_mean, saved_inv_variance=saved_inv_variance, alpha_data=alpha_data,
        beta_data=beta_data, alpha_param=alpha_param, beta_param=beta_param)
