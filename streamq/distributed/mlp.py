"""A small model for data-parallel training on facade streams, and the pieces a training step needs.

:class:`MLP` implements the model protocol the data-parallel layer expects
(``docs/distributed.md``): ``params`` (device arrays, forward order),
``forward(x, stream) -> logits`` and ``backward(grad_logits, stream, grads,
ready)``, which launches the backward kernels layer by layer from the last and
calls ``ready(i)`` as soon as the kernel writing ``grads[i]`` is launched — the
hook :meth:`Reducer.mark_ready` needs to overlap communication with backward.
Every kernel comes from the kernel registry (``aten::addmm``, ``aten::mm``,
``aten::relu``, ``aten::threshold_backward``, ``aten::sum``, the log-softmax /
NLL-loss pair, ``aten::_foreach_sgd_``) and runs on the given stream.
"""

from __future__ import annotations

import numpy as np

from streamq.cuda_facade import device_array, to_device

from ._cuda import launch

__all__ = ["MLP", "CrossEntropy", "sgd_step"]


class MLP:
    """Linear layers with ReLU between them; ``sizes`` = [inputs, hidden..., classes].

    Weights are drawn as PyTorch's ``nn.Linear`` draws them (uniform in
    ±1/sqrt(fan_in)) from ``seed``, so every rank builds the same model.
    """

    def __init__(self, sizes, *, dtype=np.float32, seed: int = 0):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list >= 2 positive layer widths, got {sizes}")
        rng = np.random.default_rng(seed)
        self.sizes = sizes
        self.dtype = np.dtype(dtype)
        self.params: list[np.ndarray] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            self.params.append(to_device(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(self.dtype)))
            self.params.append(to_device(rng.uniform(-bound, bound, fan_out).astype(self.dtype)))
        self._acts: dict[int, tuple] = {}
        self._x = None

    @property
    def layers(self) -> int:
        """Number of linear layers."""
        return len(self.sizes) - 1

    def _buffers(self, batch: int):
        """Per batch size: pre-activations, post-activations and their gradients (device arrays)."""
        found = self._acts.get(batch)
        if found is None:
            hidden = self.sizes[1:-1]
            found = self._acts[batch] = (
                [device_array((batch, n), self.dtype) for n in self.sizes[1:]],   # pre
                [device_array((batch, n), self.dtype) for n in hidden],           # post = relu(pre)
                [device_array((batch, n), self.dtype) for n in hidden],           # d(loss)/d(post)
                [device_array((batch, n), self.dtype) for n in hidden])           # d(loss)/d(pre)
        return found

    def forward(self, x: np.ndarray, stream) -> np.ndarray:
        """Launch the forward pass of batch ``x`` (batch, inputs) on ``stream``; the logits array."""
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape (batch, {self.sizes[0]}), got {x.shape}")
        pre, post, _, _ = self._buffers(x.shape[0])
        self._x = x
        inp = x
        for layer in range(self.layers):
            w, b = self.params[2 * layer], self.params[2 * layer + 1]
            launch("aten::addmm", (b, inp, w), {"out": pre[layer]}, stream)
            if layer < self.layers - 1:
                launch("aten::relu", (pre[layer],), {"out": post[layer]}, stream)
                inp = post[layer]
        return pre[-1]

    def backward(self, grad_logits: np.ndarray, stream, grads, ready) -> None:
        """Launch the backward pass from d(loss)/d(logits), last layer first; write d(loss)/d(params[i])
        into ``grads[i]`` and call ``ready(i)`` right after launching the kernel that writes it."""
        pre, post, dpost, dpre = self._buffers(grad_logits.shape[0])
        g = grad_logits
        for layer in reversed(range(self.layers)):
            inp = self._x if layer == 0 else post[layer - 1]
            w_index, b_index = 2 * layer, 2 * layer + 1
            launch("aten::mm", (inp.T, g), {"out": grads[w_index]}, stream)
            ready(w_index)
            launch("aten::sum", (g, [0]), {"out": grads[b_index]}, stream)
            ready(b_index)
            if layer > 0:
                launch("aten::mm", (g, self.params[w_index].T), {"out": dpost[layer - 1]}, stream)
                launch("aten::threshold_backward", (dpost[layer - 1], pre[layer - 1], 0),
                       {"out": dpre[layer - 1]}, stream)
                g = dpre[layer - 1]


class CrossEntropy:
    """Mean softmax cross-entropy of logits against integer targets, and its gradient."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.loss = device_array((), self.dtype)
        self._weight = device_array((), self.dtype)
        self._one = to_device(np.ones((), self.dtype))
        self._bufs: dict = {}

    def __call__(self, logits: np.ndarray, targets: np.ndarray, stream) -> np.ndarray:
        """Launch loss and gradient on ``stream``; returns d(loss)/d(logits) (``self.loss`` holds the loss)."""
        key = logits.shape
        if key not in self._bufs:
            self._bufs[key] = tuple(device_array(key, self.dtype) for _ in range(3))
        logp, dlogp, grad = self._bufs[key]
        launch("aten::_log_softmax", (logits, 1), {"out": logp}, stream)
        launch("aten::nll_loss_forward", (logp, targets, None, "mean", -100),
               {"output": self.loss, "total_weight": self._weight}, stream)
        launch("aten::nll_loss_backward", (self._one, logp, targets, None, "mean", -100, self._weight),
               {"grad_input": dlogp}, stream)
        launch("aten::_log_softmax_backward_data", (dlogp, logp, 1, self.dtype), {"out": grad}, stream)
        return grad


def sgd_step(params, grads, lr: float, stream) -> None:
    """One plain SGD step (``params[i] -= lr * grads[i]``) on ``stream`` (``aten::_foreach_sgd_``)."""
    launch("aten::_foreach_sgd_", (list(params), list(grads), None), {"lr": lr, "first_step": True}, stream)
