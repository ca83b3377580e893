"""Train a ResNet on synthetic images through streamq's CUDA facade.

    python examples/resnet_train.py                       # ResNet-18, 32x32, a short run
    python examples/resnet_train.py --depth 50 --image-size 224 --batch 16 --steps 5
    python examples/resnet_train.py --log run.jsonl       # then: streamq fusion run.jsonl

The images are synthetic but learnable: each class has its own colour and
stripe texture under noise, so the loss and accuracy visibly improve within a
few dozen steps. Every layer runs as cuDNN / cuBLAS / native-op calls on a
facade stream (see ``resnet_model.py``); the next batch is made on the host and
copied to facade memory on a second stream while the current step computes
(:class:`Prefetcher`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=18, choices=(18, 34, 50), help="ResNet depth (default 18)")
    p.add_argument("--image-size", type=int, default=32,
                   help="32: the small variant (3x3 stem, no max pool); 224: ImageNet-shaped (default 32)")
    p.add_argument("--batch", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (paper: 64; default 16)")
    p.add_argument("--classes", type=int, default=4, help="number of synthetic classes (default 4)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--threads", type=int, default=None,
                   help="worker threads (one CMG of that many cores; default: the machine's topology)")
    p.add_argument("--log", default=None, help="write the queue log (JSON lines) to this path")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    p.add_argument("--analyze", action="store_true",
                   help="after training, print the fusion analyzer's top findings on the log (needs --log)")
    return p.parse_args(argv)


class SyntheticImages:
    """Batches of images whose class is encoded by a colour and a stripe texture, plus noise."""

    def __init__(self, classes: int, size: int, seed: int):
        palette = np.random.default_rng(1234)
        self.colours = palette.uniform(-1.0, 1.0, (classes, 3)).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        self.textures = np.stack([np.sin(2 * np.pi * (1 + c % 3) * (xx if c % 2 else yy))
                                  for c in range(classes)]).astype(np.float32)
        self.classes, self.size = classes, size
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, 3, size, size) float32, labels (n,) int64)."""
        labels = self.rng.integers(0, self.classes, n)
        images = (self.colours[labels][:, :, None, None] * 0.5 + self.textures[labels][:, None] * 0.5
                  + self.rng.normal(0.0, 0.5, (n, 3, self.size, self.size))).astype(np.float32)
        return images, labels.astype(np.int64)


class Prefetcher:
    """Host-to-device copies of the next batch on a copy stream, overlapping the current step.

    Two slots, each a pinned host buffer (cudaMallocHost) and a facade buffer for the
    images and the labels. :meth:`get` makes the compute stream wait for its slot's copy
    (cudaStreamWaitEvent: the host does not block) and starts the next batch in the other
    slot: the copy stream first waits for the event :meth:`release` recorded when the
    compute stream finished with that slot two batches ago, so a copy never overwrites
    a batch still in use. Nothing is allocated after construction.
    """

    def __init__(self, eng, data: "SyntheticImages", batch: int):
        from resnet_model import check
        from streamq.cuda_facade import runtime as cudart
        self.eng, self.data, self.batch, self.check, self.rt = eng, data, batch, check, cudart
        self.stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        shape = (batch, 3, data.size, data.size)
        self.slots = []
        for _ in range(2):
            self.slots.append({
                "x_host": self._pinned(shape, np.float32), "t_host": self._pinned((batch,), np.int64),
                "x": eng.empty(shape, np.float32), "t": eng.empty((batch,), np.int64), "labels": None,
                "copied": self._event(), "released": self._event()})
        self.current = 0
        self._start(0)

    def _pinned(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self.check(self.rt.cudaMallocHost(nbytes))
        return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype).reshape(shape)

    def _event(self):
        return self.check(self.rt.cudaEventCreateWithFlags(self.rt.cudaEventDisableTiming))

    def _start(self, i: int) -> None:
        """Make the next batch into slot ``i`` and enqueue its copy on the copy stream."""
        rt, slot = self.rt, self.slots[i]
        self.check(rt.cudaEventSynchronize(slot["copied"]))      # its last copy has read the pinned buffer
        images, labels = self.data.batch(self.batch)
        slot["x_host"][...] = images
        slot["t_host"][...] = labels
        slot["labels"] = labels
        self.check(rt.cudaStreamWaitEvent(self.stream, slot["released"], 0))
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        for src, dst in ((slot["x_host"], slot["x"]), (slot["t_host"], slot["t"])):
            self.check(rt.cudaMemcpyAsync(dst.ctypes.data, src.ctypes.data, src.nbytes, h2d, self.stream))
        self.check(rt.cudaEventRecord(slot["copied"], self.stream))

    def get(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, labels) in facade memory, ordered after their copy on the compute stream, and
        the labels on the host; then starts copying the batch after it."""
        slot = self.slots[self.current]
        self.check(self.rt.cudaStreamWaitEvent(self.eng.stream, slot["copied"], 0))
        self.current ^= 1
        self._start(self.current)
        return slot["x"], slot["t"], slot["labels"]

    def release(self) -> None:
        """The compute stream's work enqueued so far is the last use of the batch from :meth:`get`."""
        self.check(self.rt.cudaEventRecord(self.slots[self.current ^ 1]["released"], self.eng.stream))


def progress(step: int, steps: int, loss: float, acc: float, rate: float) -> str:
    """One line of the progress bar."""
    width = 24
    done = int(width * step / steps)
    return (f"\r[{'#' * done}{'.' * (width - done)}] step {step:>4}/{steps}  loss {loss:7.4f}  "
            f"acc {acc:5.1%}  {rate:8.1f} img/s")


def train(args: argparse.Namespace) -> dict:
    """Run the training loop; returns the loss and accuracy per step and the images/s."""
    import streamq
    from resnet_model import CrossEntropy, Engine, ResNet, SGD

    if args.log:
        streamq.trace.enable(args.log)
    eng = Engine(0)
    model = ResNet(eng, args.depth, args.classes, width=args.width, small=args.image_size <= 64,
                   seed=args.seed)
    params, grads = model.parameters()
    loss_fn = CrossEntropy(eng)
    opt = SGD(eng, params, grads, lr=args.lr)
    data = SyntheticImages(args.classes, args.image_size, args.seed)
    batches = Prefetcher(eng, data, args.batch)
    pred = eng.empty((args.batch,), np.int64)
    print(f"ResNet-{args.depth}, {args.image_size}x{args.image_size}, batch {args.batch}, width {args.width}, "
          f"{sum(p.size for p in params):,} parameters, CMGs: "
          f"{', '.join(str(list(c.cpus)) for c in streamq.topology())}")
    history = {"loss": [], "acc": [], "img_per_s": []}
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        with streamq.trace.range(f"step {step}"):
            x, target, labels = batches.get()
            logits = model.forward(x)
            loss = loss_fn.forward(logits, target)
            model.backward(loss_fn.backward())
            opt.step()
            eng.launch("aten::argmax", logits, 1, False, out=pred)
            batches.release()
            loss_value = float(eng.download(loss))
            acc = float((eng.download(pred) == labels).mean())
        rate = args.batch / (time.perf_counter() - t0)
        history["loss"].append(loss_value)
        history["acc"].append(acc)
        history["img_per_s"].append(rate)
        print(progress(step, args.steps, loss_value, acc, rate), end="", flush=True)
    print()
    steady = history["img_per_s"][1:] or history["img_per_s"]
    print(f"{np.median(steady):.1f} images/s (median over steps after the first); "
          f"loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}")
    if args.log:
        streamq.trace.disable()
        print(f"queue log written to {args.log}")
    return history


def analyze(log: str) -> None:
    """Print the fusion analyzer's top findings on ``log`` (if the analyzer is installed)."""
    from streamq.__main__ import main as streamq_main
    print(f"\n$ streamq fusion {log}")
    streamq_main(["fusion", log, "--top", "5"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None and "STREAMQ_TOPOLOGY" not in os.environ:
        os.environ["STREAMQ_TOPOLOGY"] = f"1x{args.threads}"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    train(args)
    if args.analyze:
        if not args.log:
            print("--analyze needs --log", file=sys.stderr)
            return 2
        analyze(args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
