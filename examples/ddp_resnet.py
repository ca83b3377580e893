"""Data-parallel training over MPI, PyTorch-DDP style, on the CUDA facade's streams and NCCL.

    mpiexec -n 2 python examples/ddp_resnet.py                  # an MLP, 20 steps
    mpiexec -n 2 python examples/ddp_resnet.py --model resnet   # the small ResNet-18 of resnet_model.py

Each rank trains the same model on its share of every combined batch. The
gradients live in DDP-style buckets (reverse layer order); each bucket is
averaged by a non-blocking ncclIAllReduce issued on the compute stream as soon
as backward has produced it (``--comm-stream``: DDP's separate communication
stream instead), so the all-reduce runs while the compute stream goes on with
the earlier layers. Rank 0 then trains the same model alone on the combined
batches and compares the two loss curves (they must agree to float tolerance;
rank 0's share alone must not), and reads its queue log to report how much
all-reduce time backward hid, with a timeline of the last step.

The model is pluggable: any object with ``params``, ``forward(x, stream)``,
``backward(grad, stream, grads, ready)``, ``input_shape``, ``classes`` and
``batch_statistics`` (and optionally the ``stream`` its kernels run on) works;
see docs/distributed.md. ``--model resnet`` adapts ``examples/resnet_model.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

import streamq
from streamq.cuda_facade import device_array, nccl
from streamq.cuda_facade import runtime as rt
from streamq.distributed import MLP, CrossEntropy, ProcessGroup, Reducer, bind_local_rank, sgd_step, timeline
from streamq.distributed._cuda import check, launch


def build_model(name: str, seed: int, width: int, depth: int):
    """The model to train: every rank builds it from the same seed."""
    if name == "mlp":
        model = MLP([width] * (depth + 1) + [10], seed=seed)
        model.input_shape, model.classes, model.batch_statistics = (width,), 10, False
        return model
    if name == "resnet":
        return ResNetModel(seed)
    raise SystemExit(f"unknown --model {name!r} (mlp or resnet)")


class ResNetModel:
    """examples/resnet_model.py's small ResNet-18 behind the model protocol.

    Its layers write gradients into buffers of their own, so after each top-level block's
    backward the gradients are copied into the Reducer's bucket views (``aten::copy_``) and
    marked ready — DDP's default path when gradients are not bucket views. BatchNorm uses each
    rank's batch statistics (DDP without SyncBatchNorm): ``batch_statistics`` tells the one-rank
    comparison to accumulate gradients over the ranks' shares, which is what DDP computes."""

    batch_statistics = True

    def __init__(self, seed: int, *, width: int = 8, classes: int = 4, size: int = 16):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        try:
            import resnet_model
        except ImportError as exc:
            raise SystemExit(f"--model resnet needs examples/resnet_model.py: {exc}") from None
        self.engine = resnet_model.Engine()
        self.net = resnet_model.ResNet(self.engine, 18, classes, width=width, small=True, seed=seed)
        self.params, self._own_grads = self.net.parameters()
        self.stream = self.engine.stream        # the model's kernels run on its engine's stream
        self.input_shape, self.classes = (3, size, size), classes
        index = {id(p): i for i, p in enumerate(self.params)}
        self._units = [(child, [index[id(p)] for layer in child.layers() for p in layer.params])
                       for child in self.net.children]

    def forward(self, x, stream):
        """The logits of batch ``x`` (on the model's own stream)."""
        return self.net.forward(x)

    def backward(self, grad, stream, grads, ready):
        """Backward block by block from the last; each block's gradients go to ``grads`` and are marked ready."""
        dy = grad
        for child, indices in reversed(self._units):
            dy = child.backward(dy)
            for i in indices:
                launch("aten::copy_", (grads[i], self._own_grads[i]), {}, self.stream)
                ready(i)


def dataset(model, steps: int, batch: int, seed: int):
    """``steps`` combined batches of a synthetic classification task (class-dependent means)."""
    rng = np.random.default_rng(seed + 1)
    centers = rng.normal(0, 1, (model.classes,) + tuple(model.input_shape)).astype(np.float32)
    out = []
    for _ in range(steps):
        y = rng.integers(0, model.classes, batch).astype(np.int64)
        x = (centers[y] + rng.normal(0, 1.5, (batch,) + tuple(model.input_shape))).astype(np.float32)
        out.append((x, y))
    return out


def train(model, batches, stream, lr: float, reducer=None, group=None, shares: int = 1):
    """Run the training steps; returns the loss of each step (averaged over ranks).

    Without a reducer, ``shares > 1`` processes each batch as that many equal shares with
    gradient accumulation (the ranks' shares, one after the other), else in one piece."""
    loss_fn = CrossEntropy()
    part = batches[0][0].shape[0] // shares
    x = device_array((part,) + batches[0][0].shape[1:], np.float32)
    y = device_array((part,), np.int64)
    if reducer is None:
        grads = [device_array(p.shape, p.dtype) for p in model.params]
        total = [device_array(p.shape, p.dtype) for p in model.params] if shares > 1 else grads

        def ready(index):       # one process: nothing to reduce
            pass
    else:
        grads, total, ready = reducer.grads, reducer.grads, reducer.mark_ready
    host_loss = np.zeros(1, np.float32)
    losses = []
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    for step, (xs, ys) in enumerate(batches):
        with streamq.trace.range(f"step {step}"):
            step_loss = 0.0
            for share in range(shares):
                xb = np.ascontiguousarray(xs[share * part:(share + 1) * part])
                yb = np.ascontiguousarray(ys[share * part:(share + 1) * part])
                check(rt.cudaMemcpyAsync(x, xb, xb.nbytes, h2d, stream), "cudaMemcpyAsync(x)")
                check(rt.cudaMemcpyAsync(y, yb, yb.nbytes, h2d, stream), "cudaMemcpyAsync(y)")
                grad = loss_fn(model.forward(x, stream), y, stream)
                model.backward(grad, stream, grads, ready)
                if shares > 1:
                    for acc, g in zip(total, grads):
                        if share == 0:
                            launch("aten::copy_", (acc, g), {}, stream)
                        else:
                            launch("aten::add_", (acc, g), {}, stream)
                if reducer is not None:
                    reducer.finalize()
                if group is not None:
                    check(nccl.ncclAllReduce(loss_fn.loss, loss_fn.loss, 1, nccl.ncclDataType_t.ncclFloat32,
                                             nccl.ncclRedOp_t.ncclAvg, group.comm, stream), "ncclAllReduce(loss)")
                check(rt.cudaMemcpyAsync(host_loss, loss_fn.loss, 4, d2h, stream), "cudaMemcpyAsync(loss)")
                check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
                step_loss += float(host_loss[0]) / shares
            # the mean over the shares: lr / shares on their sum (exact for 2 or 4 shares)
            sgd_step(model.params, total, lr / shares, stream)
        losses.append(step_loss)
    check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", help="mlp (default) or resnet")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128, help="samples per rank and step")
    parser.add_argument("--width", type=int, default=1024, help="MLP layer width")
    parser.add_argument("--depth", type=int, default=4, help="MLP hidden layers")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--first-bucket-mb", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default=None,
                        help="queue-log prefix (<prefix>.rank<r>.jsonl; default: in a temporary folder); '' for none")
    parser.add_argument("--json", default="", help="write rank 0's figures to this file")
    parser.add_argument("--no-bind", action="store_true", help="do not give each rank its own share of CPUs")
    parser.add_argument("--comm-stream", action="store_true",
                        help="all-reduce on a separate stream (DDP's layout) instead of non-blocking on the "
                             "compute stream")
    args = parser.parse_args(argv)

    if not args.no_bind:
        bind_local_rank()       # one CMG per rank: its share of this node's CPUs
    group = ProcessGroup.world()
    if args.log is None:
        folder = tempfile.mkdtemp(prefix="ddp-") if group.rank == 0 else None
        args.log = os.path.join(MPI.COMM_WORLD.bcast(folder, root=0), "ddp")
    if args.log:
        streamq.trace.enable(f"{args.log}.rank{group.rank}.jsonl")
    model = build_model(args.model, args.seed, args.width, args.depth)
    batches = dataset(model, args.steps, args.batch * group.size, args.seed)
    share = slice(group.rank * args.batch, (group.rank + 1) * args.batch)    # this rank's share
    mine = [(np.ascontiguousarray(x[share]), np.ascontiguousarray(y[share])) for x, y in batches]

    compute = getattr(model, "stream", None) or check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking),
                                                      "cudaStreamCreateWithFlags")
    comm = None
    if args.comm_stream:
        # DDP's layout: a communication stream of the greatest priority (as ProcessGroupNCCL's
        # high-priority streams), so its all-reduces start as soon as a worker frees up.
        least, greatest = check(rt.cudaDeviceGetStreamPriorityRange(), "cudaDeviceGetStreamPriorityRange")
        comm = check(rt.cudaStreamCreateWithPriority(rt.cudaStreamNonBlocking, greatest),
                     "cudaStreamCreateWithPriority")
    reducer = Reducer(model.params, group, compute_stream=compute, comm_stream=comm,
                      bucket_cap_mb=args.bucket_mb, first_bucket_cap_mb=args.first_bucket_mb)
    # The loss is averaged over the ranks on a communicator of its own, so that the queue log
    # tells gradient all-reduces (on group.comm) from it.
    loss_group = ProcessGroup(check(nccl.ncclCommSplit(group.comm, 0, group.rank), "ncclCommSplit"),
                              group.rank, group.size)
    reducer.broadcast_parameters(root=0)
    started = time.perf_counter()
    losses = train(model, mine, compute, args.lr, reducer, loss_group)
    seconds = time.perf_counter() - started
    figures = {"ranks": group.size, "model": args.model, "steps": args.steps, "losses": losses,
               "seconds": seconds, "buckets": [len(b.params) for b in reducer.buckets],
               "launch_order": reducer.last_launch_order}
    if args.log:
        streamq.trace.disable()
    loss_group.destroy()
    group.destroy()
    if group.rank != 0:
        return 0

    print(f"{group.size} ranks x {args.batch} samples, {args.model}, {len(reducer.buckets)} buckets "
          f"(reverse layer order: {[b.params for b in reducer.buckets]}), {args.steps} steps in {seconds:.2f} s")
    # The same model trained in one process on the combined batches: DDP must follow the same curve.
    # (A model with batch statistics sees each rank's share on its own, as under DDP: accumulate.)
    single = build_model(args.model, args.seed, args.width, args.depth)
    shares = group.size if single.batch_statistics else 1
    reference = train(single, batches, getattr(single, "stream", None) or compute, args.lr, shares=shares)
    diff = _largest_difference(losses, reference)
    # Without the all-reduce, rank 0 alone on its share follows another curve: the comparison
    # above would catch a data-parallel run that does not really average the gradients.
    alone_model = build_model(args.model, args.seed, args.width, args.depth)
    alone = train(alone_model, mine, getattr(alone_model, "stream", None) or compute, args.lr)
    figures.update(single=reference, max_rel_diff=diff, alone=alone,
                   alone_rel_diff=_largest_difference(alone, reference), reference_shares=shares)
    print(f"step  data-parallel  one rank, combined batch{' (in shares)' if shares > 1 else ''}  "
          "rank 0's share alone")
    for step, (a, b, c) in enumerate(zip(losses, reference, alone)):
        print(f"{step:4d}  {a:13.6f}  {b:24.6f}  {c:20.6f}")
    print(f"largest relative difference, data-parallel vs combined batch: {diff:.2e} "
          f"(rank 0's share alone: {figures['alone_rel_diff']:.2e})")
    if args.log:
        records = timeline.load(f"{args.log}.rank0.jsonl")
        kernels = timeline.kernel_intervals(records, rt_label(compute))
        allreduces = [(r["start_us"], r["end_us"]) for r in records if r.get("type") == "nccl"
                      and r.get("comm") == group.comm.id and r.get("name") == "ncclAllReduce"]
        ov = timeline.overlap(allreduces, kernels)
        figures["overlap"] = ov
        steps = [r for r in records if r.get("type") == "range" and r["name"].startswith("step ")]
        print(f"gradient all-reduce time hidden behind backward: {ov['fraction']:.0%} "
              f"({ov['hidden_us'] / 1000:.1f} of {ov['allreduce_us'] / 1000:.1f} ms over {ov['count']} "
              "all-reduces)")
        if steps:
            last = steps[-1]
            print(f"timeline of the last step (rank 0, from {args.log}.rank0.jsonl):")
            print(timeline.render({"compute kernels": kernels, "all-reduce in flight": allreduces},
                                  last["start_us"], last["end_us"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f)
    return 0


def _largest_difference(curve, reference) -> float:
    return max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(curve, reference))


def rt_label(handle) -> str:
    """The queue label of a facade stream (how the queue log names it)."""
    from streamq.cuda_facade import _context
    return _context.resolve_stream(handle).label


if __name__ == "__main__":
    sys.exit(main())
