"""The ResNet example: gradients, learning, and agreement with torch.nn (when torch is installed)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, os.path.abspath(EXAMPLES))

import resnet_model as rm  # noqa: E402
from resnet_train import SyntheticImages  # noqa: E402


@pytest.fixture(scope="module")
def eng():
    return rm.Engine(0)


def _tiny(eng, depth=18, seed=0, classes=3):
    return rm.ResNet(eng, depth, classes, width=4, small=True, seed=seed)


def _loss(eng, model, loss_fn, x, t) -> float:
    return float(eng.download(loss_fn.forward(model.forward(x), t)))


def test_gradients_match_finite_differences():
    """float64 ResNet: backward's gradient of single weights vs central differences of the loss.

    float64 keeps the difference quotient exact to ~1e-9, and a tiny step keeps
    ReLU kinks and max-pool switches from being crossed.
    """
    eng = rm.Engine(0, dtype=np.float64)
    model = rm.ResNet(eng, 18, 3, width=4, small=True, seed=0)
    loss_fn = rm.CrossEntropy(eng)
    images, labels = SyntheticImages(3, 8, seed=1).batch(4)
    x, t = eng.upload(images.astype(np.float64)), eng.upload(labels)
    _loss(eng, model, loss_fn, x, t)
    model.backward(loss_fn.backward())
    eng.synchronize()
    params, grads = model.parameters()
    grads = [g.copy() for g in grads]
    rng = np.random.default_rng(7)
    eps = 1e-6
    for i in range(len(params)):          # one weight of every parameter tensor
        flat = params[i].reshape(-1)
        j = int(rng.integers(flat.size))
        v0 = flat[j]
        flat[j] = v0 + eps
        up = _loss(eng, model, loss_fn, x, t)
        flat[j] = v0 - eps
        down = _loss(eng, model, loss_fn, x, t)
        flat[j] = v0
        numeric = (up - down) / (2 * eps)
        assert grads[i].reshape(-1)[j] == pytest.approx(numeric, rel=1e-4, abs=1e-7), (i, params[i].shape)


def test_training_learns_the_synthetic_task(eng):
    """Loss falls and accuracy rises clearly within 40 steps (seeded, deterministic data)."""
    model = _tiny(eng, seed=3, classes=4)
    params, grads = model.parameters()
    loss_fn = rm.CrossEntropy(eng)
    opt = rm.SGD(eng, params, grads, lr=0.05)
    data = SyntheticImages(4, 16, seed=5)
    losses, accs = [], []
    for _ in range(40):
        images, labels = data.batch(16)
        x, t = eng.upload(images), eng.upload(labels)
        logits = model.forward(x)
        loss = loss_fn.forward(logits, t)
        model.backward(loss_fn.backward())
        opt.step()
        pred = eng.empty((16,), np.int64)
        eng.launch("aten::argmax", logits, 1, False, out=pred)
        losses.append(float(eng.download(loss)))
        accs.append(float((eng.download(pred) == labels).mean()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert np.mean(accs[-5:]) >= 0.75        # chance is 0.25


def _torch_resnet(torch, model: rm.ResNet):
    """A torch.nn copy of ``model`` with the same weights (torchvision-free)."""
    nn = torch.nn

    def convert(layer):
        if isinstance(layer, rm.Conv2d):
            conv = nn.Conv2d(layer.cin, layer.cout, layer.k, layer.stride, layer.pad, bias=False)
            conv.weight.data = torch.from_numpy(layer.w.copy())
            return conv
        if isinstance(layer, rm.BatchNorm2d):
            bn = nn.BatchNorm2d(layer.c, eps=layer.EPS, momentum=layer.MOMENTUM)
            bn.weight.data = torch.from_numpy(layer.scale.reshape(-1).copy())
            bn.bias.data = torch.from_numpy(layer.bias.reshape(-1).copy())
            return nn.Sequential(bn, nn.ReLU()) if layer.relu else bn
        if isinstance(layer, rm.ReLU):
            return nn.ReLU()
        if isinstance(layer, rm.MaxPool2d):
            return nn.MaxPool2d(layer.k, layer.stride, layer.pad)
        if isinstance(layer, rm.GlobalAvgPool):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if isinstance(layer, rm.Linear):
            fc = nn.Linear(layer.cin, layer.cout)
            fc.weight.data = torch.from_numpy(layer.w.copy())
            fc.bias.data = torch.from_numpy(layer.b.reshape(-1).copy())
            return fc
        if isinstance(layer, rm.Residual):
            body = convert(layer.body)
            short = None if layer.shortcut is None else convert(layer.shortcut)

            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body, self.short = body, short

                def forward(self, x):
                    s = x if self.short is None else self.short(x)
                    return torch.relu(self.body(x) + s)
            return Block()
        if isinstance(layer, rm.Sequential):
            return nn.Sequential(*[convert(c) for c in layer.children])
        raise TypeError(layer)

    return convert(rm.Sequential(*model.children))


@pytest.mark.parametrize("depth,small", [(18, True), (50, False)])
def test_matches_torch_forward_loss_and_gradients(eng, depth, small):
    torch = pytest.importorskip("torch")
    size = 16 if small else 64
    model = rm.ResNet(eng, depth, 5, width=4 if small else 8, small=small, seed=11)
    ref = _torch_resnet(torch, model).double()
    data = SyntheticImages(5, size, seed=2)
    images, labels = data.batch(3)
    loss_fn = rm.CrossEntropy(eng)
    logits = model.forward(eng.upload(images))
    loss = loss_fn.forward(logits, eng.upload(labels))
    model.backward(loss_fn.backward())
    ours_logits, ours_loss = eng.download(logits), float(eng.download(loss))

    xt = torch.from_numpy(images.astype(np.float64))
    out = ref(xt)
    ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels))
    ref_loss.backward()
    np.testing.assert_allclose(ours_logits, out.detach().numpy(), rtol=1e-3, atol=1e-3)
    assert ours_loss == pytest.approx(ref_loss.item(), rel=1e-3)
    params, grads = model.parameters()
    ref_grads = [p.grad.numpy() for p in ref.parameters()]
    assert len(ref_grads) == len(grads)
    for g, rg in zip(grads, ref_grads):
        scale = max(np.abs(rg).max(), 1e-3)
        np.testing.assert_allclose(g.reshape(rg.shape) / scale, rg / scale, rtol=0, atol=2e-3)


@pytest.fixture(scope="module")
def eng64():
    return rm.Engine(0, dtype=np.float64)


def _conv_ref(x, w, stride, pad):
    """float64 cross-correlation by sliding windows (independent of the facade)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,kcij->nkhw", win, w)


def test_layers_add_into_acc(eng64):
    """forward(x, acc) / backward(dy, acc) return acc holding acc + the result (float64 references)."""
    rng = np.random.default_rng(4)
    x_host = rng.standard_normal((2, 3, 6, 6))
    acc0 = rng.standard_normal((2, 5, 3, 3))
    conv = rm.Conv2d(eng64, 3, 5, 3, 2, 1, rng=rng)
    acc = eng64.upload(acc0)
    out = conv.forward(eng64.upload(x_host), acc=acc)
    assert out is acc
    np.testing.assert_allclose(eng64.download(out), acc0 + _conv_ref(x_host, conv.w.copy(), 2, 1), rtol=1e-12)

    # 1x1 convolution: dx[n, c] = sum_k w[k, c] dy[n, k]
    pw = rm.Conv2d(eng64, 3, 4, 1, rng=rng)
    pw.forward(eng64.upload(x_host))
    dy = rng.standard_normal((2, 4, 6, 6))
    acc0 = rng.standard_normal(x_host.shape)
    dx = pw.backward(eng64.upload(dy), acc=eng64.upload(acc0))
    ref = acc0 + np.einsum("kc,nkhw->nchw", pw.w.copy()[:, :, 0, 0], dy)
    np.testing.assert_allclose(eng64.download(dx), ref, rtol=1e-12)

    bn = rm.BatchNorm2d(eng64, 3)
    acc0 = rng.standard_normal(x_host.shape)
    y = bn.forward(eng64.upload(x_host), acc=eng64.upload(acc0))
    mu, var = x_host.mean(axis=(0, 2, 3), keepdims=True), x_host.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(eng64.download(y), acc0 + (x_host - mu) / np.sqrt(var + bn.EPS), rtol=1e-9)

    relu = rm.ReLU(eng64)
    acc0 = rng.standard_normal(x_host.shape)
    y = relu.forward(eng64.upload(x_host), acc=eng64.upload(acc0))
    np.testing.assert_allclose(eng64.download(y), acc0 + np.maximum(x_host, 0), rtol=1e-15)


def test_acc_of_the_wrong_shape_is_refused(eng64):
    conv = rm.Conv2d(eng64, 3, 5, 3, 1, 1, rng=np.random.default_rng(0))
    x = eng64.upload(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="acc must have shape"):
        conv.forward(x, acc=eng64.empty((1, 5, 3, 3)))


def test_inplace_relu_overwrites_its_input_and_gradient(eng64):
    x_host = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    dy_host = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    relu = rm.ReLU(eng64, inplace=True)
    x = eng64.upload(x_host)
    y = relu.forward(x)
    assert y is x
    np.testing.assert_array_equal(eng64.download(x), [[0.0, 0.0, 0.0, 0.5, 3.0]])
    dy = eng64.upload(dy_host)
    dx = relu.backward(dy)
    assert dx is dy
    np.testing.assert_array_equal(eng64.download(dy), [[0.0, 0.0, 0.0, 4.0, 5.0]])


def test_steady_state_step_allocates_no_facade_memory(tmp_path):
    """After the first step every layer reuses its buffers: the queue log shows no alloc record."""
    import streamq
    eng = rm.Engine(0)
    model = _tiny(eng, depth=50)
    params, grads = model.parameters()
    loss_fn = rm.CrossEntropy(eng)
    opt = rm.SGD(eng, params, grads, lr=0.01)
    images, labels = SyntheticImages(3, 16, seed=1).batch(4)
    x, t = eng.upload(images), eng.upload(labels)
    log = tmp_path / "steps.jsonl"

    def step():
        loss = loss_fn.forward(model.forward(x), t)
        model.backward(loss_fn.backward())
        opt.step()
        eng.synchronize()
        return loss

    step()
    streamq.trace.enable(str(log))
    try:
        step()
        step()
    finally:
        streamq.trace.disable()
    text = log.read_text()
    assert '"cudnn.convolution_forward"' in text
    assert '"type":"alloc"' not in text.replace(" ", "")


@pytest.mark.parametrize("depth,small,size", [(18, True, 8), (50, False, 64)])
def test_three_sgd_steps_match_torch(eng64, depth, small, size):
    """Consecutive steps (reused buffers, in-place ReLU, fused residual sums, momentum) track
    torch.nn + torch.optim.SGD in float64. (ResNet-50 at 64x64 keeps 16 values per batch-norm
    statistic in its last stage; at 32x32 there are 4, and float64 rounding differences get
    amplified past 1e-5 within three steps.)"""
    torch = pytest.importorskip("torch")
    model = rm.ResNet(eng64, depth, 3, width=4, small=small, seed=5)
    ref = _torch_resnet(torch, model).double()
    params, grads = model.parameters()
    loss_fn = rm.CrossEntropy(eng64)
    opt = rm.SGD(eng64, params, grads, lr=0.05, momentum=0.9, weight_decay=1e-4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    data = SyntheticImages(3, size, seed=9)
    for _ in range(3):
        images, labels = data.batch(4)
        images = images.astype(np.float64)
        loss = loss_fn.forward(model.forward(eng64.upload(images)), eng64.upload(labels))
        model.backward(loss_fn.backward())
        opt.step()
        ref_opt.zero_grad()
        ref_loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(images)), torch.from_numpy(labels))
        ref_loss.backward()
        ref_opt.step()
        assert float(eng64.download(loss)) == pytest.approx(ref_loss.item(), rel=1e-6)
    for p, rp in zip(params, ref.parameters()):
        np.testing.assert_allclose(p.reshape(rp.shape), rp.detach().numpy(), rtol=1e-6, atol=1e-8)


def test_training_script_runs_and_logs(tmp_path):
    log = tmp_path / "run.jsonl"
    res = subprocess.run([sys.executable, os.path.join(EXAMPLES, "resnet_train.py"), "--steps", "3",
                          "--batch", "4", "--width", "4", "--log", str(log)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "images/s" in res.stdout
    text = log.read_text()
    assert '"cudnn.convolution_forward"' in text and '"cublas.gemm"' in text
