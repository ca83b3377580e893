"""Tests of the ATen linear-algebra, embedding, cat and optimizer kernels.

Every provider is checked against the float64 ``reference``; the reference is
checked against independent computations: naive Python loops, hand-computed
values, finite differences, and, where torch is installed, torch itself.
"""

import math

import numpy as np
import pytest

from streamq import kernels
import streamq.kernels.aten_linear as aten_linear

try:  # load every builtin kernel module; one of them failing must not hide ours
    kernels.ops()
except ImportError:
    pass

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional peer
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

FLOATS = [np.float32, np.float64]
# float16 data is rounded to 11 significant bits (eps 9.8e-4); its tolerance is
# scaled from float32's by the ratio of the epsilons.
RTOL = {np.float16: 5e-3, np.float32: 1e-4, np.float64: 1e-12}


def P(op):
    return kernels.providers(op)


@pytest.fixture(autouse=True)
def parallel_paths(monkeypatch):
    """Send even the small test arrays through the numba kernels (not numpy's fallback)."""
    monkeypatch.setattr(aten_linear, "_PARALLEL_MIN_BYTES", 0)


def randn(r, shape, dtype):
    return r.standard_normal(shape).astype(dtype)


def assert_close(actual, expected, dtype, scale=1.0):
    rtol = RTOL[np.dtype(dtype).type]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=rtol * scale, equal_nan=True)


def naive_matmul(a, b):
    n, k = a.shape
    m = b.shape[1]
    return np.array([[math.fsum(float(a[i, p]) * float(b[p, j]) for p in range(k))
                      for j in range(m)] for i in range(n)]).reshape(n, m)


def strided(a):
    """A non-contiguous copy of ``a`` (every other element of a wider array)."""
    wide = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


# ----------------------------------------------------------------------------
# mm / bmm / addmm
# ----------------------------------------------------------------------------

def test_mm_bmm_addmm_reference_match_naive_loops():
    r = np.random.default_rng(0)
    a, b = randn(r, (3, 4), np.float64), randn(r, (4, 5), np.float64)
    expected = naive_matmul(a, b)
    out = np.empty((3, 5))
    kernels.get("aten::mm", "reference")(a, b, out=out)
    np.testing.assert_allclose(out, expected, rtol=1e-14)
    bias = randn(r, (5,), np.float64)
    kernels.get("aten::addmm", "reference")(bias, a, b, beta=0.5, alpha=2.0, out=out)
    np.testing.assert_allclose(out, 0.5 * bias + 2.0 * expected, rtol=1e-14)
    ab, bb = np.stack([a, 2 * a]), np.stack([b, -b])
    out3 = np.empty((2, 3, 5))
    kernels.get("aten::bmm", "reference")(ab, bb, out=out3)
    np.testing.assert_allclose(out3[1], naive_matmul(2 * a, -b), rtol=1e-14)
    # hand-computed: [[1, 2], [3, 4]] @ [[5, 6], [7, 8]]
    kernels.get("aten::mm", "reference")(np.array([[1., 2.], [3., 4.]]),
                                         np.array([[5., 6.], [7., 8.]]), out=out[:2, :2])
    np.testing.assert_array_equal(out[:2, :2], [[19, 22], [43, 50]])


@pytest.mark.parametrize("provider", P("aten::mm"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 9, 1), (13, 1, 6), (4, 0, 3)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_mm_matches_reference(provider, dtype, shape, layout):
    r = np.random.default_rng(1)
    n, k, m = shape
    a, b = randn(r, (n, k), dtype), randn(r, (k, m), dtype)
    if layout == "transposed":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    elif layout == "strided":
        a, b = strided(a), strided(b)
    out = np.full((n, m), np.nan, dtype)
    if layout == "strided":
        out = strided(out)
    expected = np.empty((n, m), dtype)
    kernels.get("aten::mm", "reference")(a, b, out=expected)
    assert kernels.get("aten::mm", provider)(a, b, out=out) is out
    assert_close(out, expected, dtype, scale=k)


@pytest.mark.parametrize("provider", P("aten::bmm"))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (3, 7, 2, 1)])
def test_bmm_matches_reference(provider, dtype, shape):
    r = np.random.default_rng(2)
    bsz, n, k, m = shape
    a, b = randn(r, (bsz, n, k), dtype), strided(randn(r, (bsz, k, m), dtype))
    out, expected = np.empty((bsz, n, m), dtype), np.empty((bsz, n, m), dtype)
    kernels.get("aten::bmm", "reference")(a, b, out=expected)
    kernels.get("aten::bmm", provider)(a, b, out=out)
    assert_close(out, expected, dtype, scale=k)


@pytest.mark.parametrize("provider", P("aten::addmm"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("self_shape", [(), (6,), (1, 6), (5, 1), (5, 6)])
@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, -2.0), (0, 1.5)])
def test_addmm_matches_reference(provider, dtype, self_shape, beta, alpha):
    r = np.random.default_rng(3)
    self = randn(r, self_shape, dtype)
    m1, m2 = randn(r, (5, 7), dtype), strided(randn(r, (7, 6), dtype))
    out, expected = np.empty((5, 6), dtype), np.empty((5, 6), dtype)
    kernels.get("aten::addmm", "reference")(self, m1, m2, beta=beta, alpha=alpha, out=expected)
    assert kernels.get("aten::addmm", provider)(self, m1, m2, beta=beta, alpha=alpha,
                                                out=out) is out
    assert_close(out, expected, dtype, scale=7 * abs(alpha) + abs(beta))


@pytest.mark.parametrize("provider", P("aten::addmm"))
def test_addmm_beta_zero_ignores_nan_self_and_nan_inputs_propagate(provider):
    r = np.random.default_rng(4)
    m1, m2 = randn(r, (3, 4), np.float32), randn(r, (4, 2), np.float32)
    out = np.empty((3, 2), np.float32)
    kernels.get("aten::addmm", provider)(np.full(2, np.nan, np.float32), m1, m2, beta=0,
                                         out=out)
    assert np.isfinite(out).all()
    m1[1, 2] = np.inf
    m2[0, 1] = np.nan
    expected = np.empty_like(out)
    kernels.get("aten::addmm", "reference")(np.ones(2, np.float32), m1, m2, out=expected)
    kernels.get("aten::addmm", provider)(np.ones(2, np.float32), m1, m2, out=out)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert_close(out, expected, np.float32, scale=4)


@pytest.mark.parametrize("provider", P("aten::addmm"))
def test_addmm_in_place_out_is_self(provider):
    r = np.random.default_rng(5)
    self = randn(r, (4, 3), np.float64)
    m1, m2 = randn(r, (4, 2), np.float64), randn(r, (2, 3), np.float64)
    expected = 0.5 * self + m1 @ m2
    kernels.get("aten::addmm", provider)(self, m1, m2, beta=0.5, out=self)
    np.testing.assert_allclose(self, expected, rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("provider", P("aten::addmm"))
def test_addmm_matches_torch(provider):
    r = np.random.default_rng(6)
    self, m1, m2 = randn(r, (3,), np.float64), randn(r, (2, 5), np.float64), randn(r, (5, 3), np.float64)
    out = np.empty((2, 3))
    kernels.get("aten::addmm", provider)(self, m1, m2, beta=0.3, alpha=-1.7, out=out)
    expected = torch.addmm(*(torch.from_numpy(x) for x in (self, m1, m2)), beta=0.3, alpha=-1.7)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("op,args,exc,name", [
    ("aten::mm", (np.ones((2, 3)), np.ones((4, 2))), ValueError, "mat2"),
    ("aten::mm", (np.ones(3), np.ones((3, 2))), ValueError, "self"),
    ("aten::mm", (np.ones((2, 3)), np.ones((3, 2), np.float32)), TypeError, "mat2"),
    ("aten::mm", (np.ones((2, 3), np.int64), np.ones((3, 2))), TypeError, "self"),
    ("aten::bmm", (np.ones((2, 2, 3)), np.ones((3, 3, 2))), ValueError, "mat2"),
    ("aten::addmm", (np.ones(4), np.ones((2, 3)), np.ones((3, 2))), ValueError, "self"),
    ("aten::addmm", (np.ones(2), np.ones((2, 3)), np.ones((2, 2))), ValueError, "mat2"),
    ("aten::addmm", (np.ones(2, np.float32), np.ones((2, 3)), np.ones((3, 2))), TypeError, "self"),
])
def test_matmul_ops_reject_bad_arguments(op, args, exc, name):
    shape = {"aten::mm": (2, 2), "aten::bmm": (2, 2, 2), "aten::addmm": (2, 2)}[op]
    for provider in P(op):
        with pytest.raises(exc, match=rf"\b{name}\b"):
            kernels.get(op, provider)(*args, out=np.empty(shape))


@pytest.mark.parametrize("provider", P("aten::mm"))
def test_mm_rejects_bad_out(provider):
    mm = kernels.get("aten::mm", provider)
    a, b = np.ones((2, 3)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"\bout\b"):
        mm(a, b, out=np.empty((2, 3)))
    with pytest.raises(TypeError, match=r"\bout\b"):
        mm(a, b, out=np.empty((2, 4), np.float32))
    ro = np.empty((2, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"\bout\b"):
        mm(a, b, out=ro)


# ----------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------

def test_embedding_reference_matches_naive_loop():
    r = np.random.default_rng(10)
    w = randn(r, (6, 3), np.float64)
    idx = np.array([[0, 5, 5], [2, 1, 0]])
    out = np.empty((2, 3, 3))
    kernels.get("aten::embedding", "reference")(w, idx, padding_idx=5, out=out)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(out[i, j], w[idx[i, j]])  # padding row copied too


@pytest.mark.parametrize("provider", P("aten::embedding"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16, np.int32])
@pytest.mark.parametrize("idx_shape", [(1,), (4, 7), (2, 0)])
def test_embedding_matches_reference(provider, dtype, idx_shape):
    r = np.random.default_rng(11)
    w = (r.standard_normal((11, 5)) * 10).astype(dtype)
    w[3, 1] = np.nan if np.dtype(dtype).kind == "f" else 0
    idx = r.integers(0, 11, idx_shape).astype(np.int32)
    out, expected = np.empty(idx_shape + (5,), dtype), np.empty(idx_shape + (5,), dtype)
    kernels.get("aten::embedding", "reference")(w, idx, out=expected)
    assert kernels.get("aten::embedding", provider)(w, idx, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("provider", P("aten::embedding"))
def test_embedding_non_contiguous_inputs_and_out(provider, monkeypatch):
    r = np.random.default_rng(12)
    w = strided(randn(r, (9, 4), np.float32))
    idx = np.arange(12).reshape(3, 4)[:, ::2] % 9
    out = strided(np.empty((3, 2, 4), np.float32))
    kernels.get("aten::embedding", provider)(w, idx, out=out)
    np.testing.assert_array_equal(out, w[idx])
    monkeypatch.setattr(aten_linear, "_PARALLEL_MIN_BYTES", 1 << 18)  # small-size path too
    out2 = np.empty((3, 2, 4), np.float32)
    kernels.get("aten::embedding", provider)(w, idx, out=out2)
    np.testing.assert_array_equal(out2, w[idx])


@pytest.mark.parametrize("provider", P("aten::embedding"))
def test_embedding_rejects_bad_arguments(provider):
    emb = kernels.get("aten::embedding", provider)
    w = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"\bindices\b.*\b4\b"):
        emb(w, np.array([0, 4]), out=np.empty((2, 2)))
    with pytest.raises(ValueError, match=r"\bindices\b"):
        emb(w, np.array([-1, 0]), out=np.empty((2, 2)))
    with pytest.raises(TypeError, match=r"\bindices\b"):
        emb(w, np.array([0.0, 1.0]), out=np.empty((2, 2)))
    with pytest.raises(ValueError, match=r"\bpadding_idx\b"):
        emb(w, np.array([0, 1]), padding_idx=4, out=np.empty((2, 2)))
    with pytest.raises(ValueError, match=r"\bout\b"):
        emb(w, np.array([0, 1]), out=np.empty((2, 3)))
    with pytest.raises(ValueError, match=r"\bweight\b"):
        emb(np.ones(4), np.array([0, 1]), out=np.empty((2, 2)))


def test_embedding_backward_reference_matches_naive_loop():
    r = np.random.default_rng(13)
    idx = np.array([[1, 3, 1], [0, 1, 4]])
    grad = randn(r, (2, 3, 2), np.float64)
    expected = np.zeros((6, 2))
    for i in range(2):
        for j in range(3):
            if idx[i, j] != 4:  # padding_idx
                expected[idx[i, j]] += grad[i, j]
    out = np.full((6, 2), np.nan)
    kernels.get("aten::embedding_backward", "reference")(grad, idx, 6, padding_idx=4, out=out)
    np.testing.assert_allclose(out, expected, rtol=1e-14)


@pytest.mark.parametrize("provider", P("aten::embedding_backward"))
def test_embedding_backward_finite_differences(provider):
    """L(W) = sum(embedding(W, idx) * R) has dL/dW = embedding_backward(R, idx)."""
    r = np.random.default_rng(14)
    w, idx = randn(r, (5, 3), np.float64), r.integers(0, 5, (4, 2))
    R = randn(r, (4, 2, 3), np.float64)
    emb = kernels.get("aten::embedding", "reference")

    def loss(weights):
        return float(np.sum(emb(weights, idx, out=np.empty((4, 2, 3))) * R))

    numeric = np.zeros_like(w)
    h = 1e-6
    for pos in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[pos] += h
        wm[pos] -= h
        numeric[pos] = (loss(wp) - loss(wm)) / (2 * h)
    grad = kernels.get("aten::embedding_backward", provider)(R, idx, 5, out=np.empty((5, 3)))
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("provider", P("aten::embedding_backward"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("padding_idx", [-1, 0, 6])
@pytest.mark.parametrize("idx_shape", [(1,), (9, 5), (0, 3)])
def test_embedding_backward_matches_reference(provider, dtype, padding_idx, idx_shape):
    r = np.random.default_rng(15)
    idx = r.integers(0, 7, idx_shape)  # many duplicates among 7 weights
    grad = randn(r, idx_shape + (4,), dtype)
    if grad.size:
        grad.reshape(-1)[5 % grad.size] = np.inf
    out = np.full((7, 4), np.nan, dtype)
    expected = np.empty((7, 4), dtype)
    kernels.get("aten::embedding_backward", "reference")(grad, idx, 7, padding_idx=padding_idx,
                                                         out=expected)
    kernels.get("aten::embedding_backward", provider)(grad, idx, 7, padding_idx=padding_idx,
                                                     out=out)
    assert_close(out, expected, dtype, scale=idx.size)
    if padding_idx >= 0:
        assert (out[padding_idx] == 0).all()


@pytest.mark.parametrize("provider", P("aten::embedding_backward"))
def test_embedding_backward_non_contiguous(provider):
    r = np.random.default_rng(16)
    idx = np.arange(10)[::-1][::3] % 4  # [9, 6, 3, 0] % 4, negative-stride view
    grad = strided(randn(r, (4, 3), np.float32))
    out = strided(np.empty((4, 3), np.float32))
    kernels.get("aten::embedding_backward", provider)(grad, idx, 4, out=out)
    expected = np.zeros((4, 3))
    np.add.at(expected, idx, grad.astype(np.float64))
    assert_close(out, expected, np.float32)


@needs_torch
@pytest.mark.parametrize("provider", P("aten::embedding_backward"))
def test_embedding_backward_matches_torch(provider):
    r = np.random.default_rng(17)
    idx = r.integers(0, 6, (5, 4))
    w = torch.tensor(randn(r, (6, 3), np.float64), requires_grad=True)
    grad = randn(r, (5, 4, 3), np.float64)
    torch.nn.functional.embedding(torch.from_numpy(idx), w, padding_idx=2).backward(
        torch.from_numpy(grad))
    out = np.empty((6, 3))
    kernels.get("aten::embedding_backward", provider)(grad, idx, 6, padding_idx=2, out=out)
    np.testing.assert_allclose(out, w.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("provider", P("aten::embedding_backward"))
def test_embedding_backward_rejects_bad_arguments(provider):
    f = kernels.get("aten::embedding_backward", provider)
    g, idx = np.ones((3, 2)), np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"\bindices\b"):
        f(g, np.array([0, 1, 3]), 3, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match=r"\bgrad_output\b"):
        f(np.ones((2, 2)), idx, 3, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match=r"\bnum_weights\b"):
        f(g, idx, -1, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match=r"\bpadding_idx\b"):
        f(g, idx, 3, padding_idx=-2, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match=r"\bout\b"):
        f(g, idx, 4, out=np.empty((3, 2)))
    with pytest.raises(TypeError, match=r"\bout\b"):
        f(g, idx, 3, out=np.empty((3, 2), np.float32))


# ----------------------------------------------------------------------------
# cat
# ----------------------------------------------------------------------------

def test_cat_reference_matches_slicing():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(4.0).reshape(2, 2) + 100
    out = np.empty((2, 5))
    kernels.get("aten::cat", "reference")([a, b], -1, out=out)
    np.testing.assert_array_equal(out, [[0, 1, 2, 100, 101], [3, 4, 5, 102, 103]])


@pytest.mark.parametrize("provider", P("aten::cat"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16, np.int64, np.bool_])
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_cat_matches_reference(provider, dtype, dim):
    r = np.random.default_rng(20)
    sizes = [1, 4, 0, 3]
    tensors = []
    for i, s in enumerate(sizes):
        shape = [2, 3, 5]
        shape[dim] = s
        t = (r.standard_normal(shape) * 10).astype(dtype)
        tensors.append(strided(t) if i == 1 and shape[-1] else t)
    total = [2, 3, 5]
    total[dim] = sum(sizes)
    out, expected = np.empty(total, dtype), np.empty(total, dtype)
    kernels.get("aten::cat", "reference")(tensors, dim, out=expected)
    np.testing.assert_array_equal(expected, np.concatenate(tensors, axis=dim))
    assert kernels.get("aten::cat", provider)(tensors, dim, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("provider", P("aten::cat"))
def test_cat_legacy_empty_and_strided_out(provider):
    r = np.random.default_rng(21)
    a, b = randn(r, (3, 2), np.float32), randn(r, (3, 4), np.float32)
    out = strided(np.empty((3, 6), np.float32))
    kernels.get("aten::cat", provider)([np.empty(0, np.float32), a, b, np.empty(0, np.float32)],
                                       1, out=out)
    np.testing.assert_array_equal(out, np.concatenate([a, b], 1))
    single = np.empty(3, np.float32)
    kernels.get("aten::cat", provider)([np.arange(3, dtype=np.float32)], 0, out=single)
    np.testing.assert_array_equal(single, [0, 1, 2])
    empty = np.empty(0, np.float32)
    kernels.get("aten::cat", provider)([np.empty(0, np.float32)] * 2, 0, out=empty)


@pytest.mark.parametrize("provider", P("aten::cat"))
def test_cat_rejects_bad_arguments(provider):
    cat = kernels.get("aten::cat", provider)
    a = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"tensors\[2\]"):
        cat([a, a, np.ones((3, 3))], 1, out=np.empty((2, 9)))
    with pytest.raises(ValueError, match=r"tensors\[1\]"):
        cat([a, np.ones((2, 3, 1))], 0, out=np.empty((4, 3)))
    with pytest.raises(TypeError, match=r"tensors\[1\]"):
        cat([a, a.astype(np.float32)], 0, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match=r"\bdim\b"):
        cat([a, a], 2, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match=r"\bdim\b"):
        cat([a, a], -3, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match=r"\bout\b"):
        cat([a, a], 0, out=np.empty((4, 4)))
    with pytest.raises(ValueError, match=r"\btensors\b"):
        cat([], 0, out=np.empty(0))
    with pytest.raises(ValueError, match=r"tensors\[0\]"):
        cat([np.array(1.0)], 0, out=np.empty(1))
    big = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\bout\b.*tensors\[0\]"):
        cat([big[:2], a], 0, out=big)


# ----------------------------------------------------------------------------
# optimizers: independent per-element implementations of the torch.optim docs
# ----------------------------------------------------------------------------

def naive_sgd(p, g, b, *, lr, momentum, dampening, weight_decay, nesterov, maximize,
              first_step):
    """torch.optim.SGD's documented algorithm, one element at a time (float64)."""
    p, g, b = p.astype(np.float64).ravel(), g.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        gi += weight_decay * p[i]
        if momentum:
            b[i] = gi if first_step else momentum * b[i] + (1 - dampening) * gi
            gi = gi + momentum * b[i] if nesterov else b[i]
        p[i] -= lr * gi
    return p, b


def naive_adam(p, g, m, v, vmax, t, *, lr, beta1, beta2, weight_decay, eps, amsgrad, maximize):
    """torch.optim.Adam's documented algorithm (bias-corrected moments), per element."""
    p, g = p.astype(np.float64).ravel(), g.astype(np.float64).ravel()
    m, v, vmax = (x.astype(np.float64).ravel() for x in (m, v, vmax))
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        gi += weight_decay * p[i]
        m[i] = beta1 * m[i] + (1 - beta1) * gi
        v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
        m_hat = m[i] / (1 - beta1 ** t)
        if amsgrad:
            vmax[i] = max(vmax[i], v[i])
            v_hat = vmax[i] / (1 - beta2 ** t)
        else:
            v_hat = v[i] / (1 - beta2 ** t)
        p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return p, m, v, vmax


SHAPES = [(3, 4), (1,), (37,), (2, 0), (5, 1, 3)]


def make_tensors(r, dtype, n_lists, shapes=SHAPES):
    return [[randn(r, s, dtype) for s in shapes] for _ in range(n_lists)]


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01, maximize=True),
    dict(lr=0.2, momentum=0.5, nesterov=True, weight_decay=0.1),
]


@pytest.mark.parametrize("config", SGD_CONFIGS)
@pytest.mark.parametrize("first_step", [True, False])
def test_sgd_reference_matches_naive(config, first_step):
    r = np.random.default_rng(30)
    params, grads, bufs = make_tensors(r, np.float64, 3)
    full = {**dict(momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False),
            **config}
    expected = [naive_sgd(p, g, b, first_step=first_step, **full)
                for p, g, b in zip(params, grads, bufs)]
    kernels.get("aten::_foreach_sgd_", "reference")(params, grads, bufs, first_step=first_step,
                                                    **config)
    for p, b, (ep, eb) in zip(params, bufs, expected):
        np.testing.assert_allclose(p.ravel(), ep, rtol=1e-14, atol=1e-15)
        if full["momentum"]:
            np.testing.assert_allclose(b.ravel(), eb, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("provider", P("aten::_foreach_sgd_"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd_matches_reference_over_steps(provider, dtype, config):
    r = np.random.default_rng(31)
    params, grads, bufs = make_tensors(r, dtype, 3)
    params[2] = strided(params[2])  # non-contiguous param, updated in place
    grads[0][0, 0] = np.nan
    ref_p, ref_b = [p.copy() for p in params], [b.copy() for b in bufs]
    sgd, ref = kernels.get("aten::_foreach_sgd_", provider), kernels.get("aten::_foreach_sgd_",
                                                                         "reference")
    for step in range(3):
        sgd(params, grads, bufs, first_step=step == 0, **config)
        ref(ref_p, grads, ref_b, first_step=step == 0, **config)
    for p, e in zip(params + bufs, ref_p + ref_b):
        assert_close(p, e, dtype)


@needs_torch
@pytest.mark.parametrize("provider", P("aten::_foreach_sgd_"))
@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd_matches_torch(provider, config):
    r = np.random.default_rng(32)
    params, bufs = [randn(r, s, np.float64) for s in SHAPES], [np.empty(s) for s in SHAPES]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.SGD(tparams, foreach=False, **config)
    for step in range(4):
        grads = [randn(r, s, np.float64) for s in SHAPES]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        kernels.get("aten::_foreach_sgd_", provider)(params, grads, bufs, first_step=step == 0,
                                                     **config)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


ADAM_CONFIGS = [
    dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
         maximize=False),
    dict(lr=3e-2, beta1=0.8, beta2=0.99, weight_decay=0.1, eps=1e-6, amsgrad=True,
         maximize=False),
    dict(lr=1e-3, beta1=0.5, beta2=0.9, weight_decay=0.01, eps=1e-8, amsgrad=True,
         maximize=True),
]


def adam_state(r, dtype, shapes=SHAPES):
    params, grads = make_tensors(r, dtype, 2, shapes)
    zeros = [[np.zeros(s, dtype) for s in shapes] for _ in range(3)]
    steps = [np.zeros(1, np.float32) for _ in shapes]
    return params, grads, zeros[0], zeros[1], zeros[2], steps


@pytest.mark.parametrize("config", ADAM_CONFIGS)
def test_adam_reference_matches_naive(config):
    r = np.random.default_rng(40)
    params, grads, ms, vs, vmaxs, steps = adam_state(r, np.float64)
    expected = [(p.copy(), m.copy(), v.copy(), x.copy()) for p, m, v, x in
                zip(params, ms, vs, vmaxs)]
    adam = kernels.get("aten::_fused_adam_", "reference")
    for t in (1, 2, 3):
        expected = [naive_adam(p, g, m, v, x, t, **config)
                    for (p, m, v, x), g in zip(expected, grads)]
        adam(params, grads, ms, vs, vmaxs, steps, **config)
    assert all(s[0] == 3 for s in steps)
    for got, exp in zip(zip(params, ms, vs, vmaxs), expected):
        for a, e in zip(got, exp):
            np.testing.assert_allclose(a.ravel(), e, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("provider", P("aten::_fused_adam_"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("config", ADAM_CONFIGS)
def test_adam_matches_reference_over_steps(provider, dtype, config):
    r = np.random.default_rng(41)
    state = adam_state(r, dtype)
    state[0][2] = strided(state[0][2])
    state[1][0][1, 1] = np.inf  # an inf gradient turns its parameter into NaN in both
    ref_state = [[x.copy() for x in lst] for lst in state]
    ref_state[1] = state[1]
    for _ in range(3):
        kernels.get("aten::_fused_adam_", provider)(*state, **config)
        kernels.get("aten::_fused_adam_", "reference")(*ref_state, **config)
    for lst, ref_lst in zip(state, ref_state):
        for a, e in zip(lst, ref_lst):
            assert_close(a, e, dtype)


@needs_torch
@pytest.mark.parametrize("provider", P("aten::_fused_adam_"))
@pytest.mark.parametrize("config", ADAM_CONFIGS)
@pytest.mark.parametrize("fused", [False, True])
def test_adam_matches_torch(provider, config, fused):
    r = np.random.default_rng(42)
    params, _, ms, vs, vmaxs, steps = adam_state(r, np.float64)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.Adam(tparams, lr=config["lr"], betas=(config["beta1"], config["beta2"]),
                           eps=config["eps"], weight_decay=config["weight_decay"],
                           amsgrad=config["amsgrad"], maximize=config["maximize"],
                           foreach=False, fused=fused)
    for _ in range(4):
        grads = [randn(r, s, np.float64) for s in SHAPES]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        kernels.get("aten::_fused_adam_", provider)(params, grads, ms, vs, vmaxs, steps, **config)
    for p, tp in zip(params, tparams):
        st = opt.state[tp]
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-14)
        assert float(st["step"]) == 4
    np.testing.assert_allclose(ms[0], opt.state[tparams[0]]["exp_avg"].numpy(), rtol=1e-10)


def test_optimizers_reject_bad_arguments():
    ok = [np.ones(3)]
    sgd_ok = dict(lr=0.1, momentum=0.9, first_step=True)
    adam_ok = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                   maximize=False)
    cases = [
        ("sgd", (ok, ok + ok, [np.ones(3)]), sgd_ok, ValueError, "grads"),
        ("sgd", (ok, [np.ones(4)], [np.ones(3)]), sgd_ok, ValueError, r"grads\[0\]"),
        ("sgd", (ok, [np.ones(3, np.float32)], [np.ones(3)]), sgd_ok, TypeError, r"grads\[0\]"),
        ("sgd", (ok, ok, None), sgd_ok, ValueError, "momentum_buffers"),
        ("sgd", (ok, ok, [np.ones(3)]), {**sgd_ok, "lr": -1}, ValueError, "lr"),
        ("sgd", (ok, ok, [np.ones(3)]), {**sgd_ok, "momentum": 0, "nesterov": True},
         ValueError, "nesterov"),
        ("sgd", (ok, ok, [np.ones(3)]), {**sgd_ok, "weight_decay": -0.1}, ValueError,
         "weight_decay"),
        ("sgd", ([[1.0, 2.0]], ok, [np.ones(3)]), sgd_ok, TypeError, r"params\[0\]"),
        ("adam", (ok, ok, ok, ok, None, [np.zeros(1)]), {**adam_ok, "beta1": 1.0}, ValueError,
         "beta1"),
        ("adam", (ok, ok, ok, ok, None, [np.zeros(1)]), {**adam_ok, "eps": -1.0}, ValueError,
         "eps"),
        ("adam", (ok, ok, ok, ok, None, [np.zeros(2)]), adam_ok, ValueError, r"state_steps\[0\]"),
        ("adam", (ok, ok, ok, ok, None, []), adam_ok, ValueError, "state_steps"),
        ("adam", (ok, ok, ok, ok, None, [np.zeros(1)]), {**adam_ok, "amsgrad": True},
         ValueError, "max_exp_avg_sqs"),
        ("adam", (ok, ok, [np.ones(2)], ok, None, [np.zeros(1)]), adam_ok, ValueError,
         r"exp_avgs\[0\]"),
    ]
    for which, args, kw, exc, name in cases:
        op = "aten::_foreach_sgd_" if which == "sgd" else "aten::_fused_adam_"
        for provider in P(op):
            copies = [None if a is None else [x.copy() if isinstance(x, np.ndarray) else x
                                              for x in a] for a in args]
            with pytest.raises(exc, match=rf"\b{name}"):
                kernels.get(op, provider)(*copies, **kw)
    ro = np.ones(3)
    ro.flags.writeable = False
    for provider in P("aten::_foreach_sgd_"):
        with pytest.raises(ValueError, match=r"params\[0\]"):
            kernels.get("aten::_foreach_sgd_", provider)([ro], ok, None, lr=0.1, first_step=True)


@pytest.mark.parametrize("provider", P("aten::_fused_adam_"))
def test_optimizers_empty_lists_are_noops(provider):
    kernels.get("aten::_fused_adam_", provider)([], [], [], [], None, [], lr=1e-3, beta1=0.9,
                                                beta2=0.999, weight_decay=0, eps=1e-8,
                                                amsgrad=False, maximize=False)
    kernels.get("aten::_foreach_sgd_", provider)([], [], [], lr=0.1, momentum=0.9,
                                                 first_step=True)
