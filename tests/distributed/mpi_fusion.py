"""Worker: Horovod-style tensor fusion across ranks. ``mpiexec -n N python mpi_fusion.py``.

Thirty tensors of mixed sizes and dtypes (float32, float64, int64) are queued;
with a 4 KiB threshold they must be reduced in as many collectives as the
threshold rule gives (computed here independently), and every tensor must hold
the numpy sum over the ranks' inputs.
"""

import numpy as np
from mpi_common import report

from streamq.cuda_facade import nccl, to_device, to_host
from streamq.cuda_facade import runtime as rt
from streamq.distributed import ProcessGroup, TensorFusion

THRESHOLD = 4096


def expected_collectives(tensors) -> int:
    """The documented rule: the queue is flushed when its bytes reach the threshold; in a flush,
    consecutive tensors of one dtype share a collective while their bytes fit the threshold."""
    def chunks(pending):
        count, size, dtype = 0, 0, None
        for t in pending:
            if count == 0 or t.dtype != dtype or size + t.nbytes > THRESHOLD:
                count, size, dtype = count + 1, 0, t.dtype
            size += t.nbytes
        return count

    total, pending = 0, []
    for t in tensors:
        pending.append(t)
        if sum(p.nbytes for p in pending) >= THRESHOLD:
            total, pending = total + chunks(pending), []
    return total + chunks(pending)


def main():
    group = ProcessGroup.world()
    rank, size = group.rank, group.size
    err, stream = rt.cudaStreamCreate()
    shapes = [(7,), (3, 5), (100,), (2000,), (1,), (33, 3), (600,), (1025,)] * 4 + [(5,), (9,)]
    dtypes = [np.float32, np.float64, np.int64]
    inputs = [[(np.arange(np.prod(s)).reshape(s) % 13 + r * (i + 1)).astype(dtypes[i % 3 if i < 16 else 0])
               for i, s in enumerate(shapes)] for r in range(size)]
    fusion = TensorFusion(group, stream, threshold_mb=THRESHOLD / (1 << 20), op=nccl.ncclRedOp_t.ncclSum)
    tensors = [to_device(a) for a in inputs[rank]]
    handles = [fusion.allreduce_async(t, name=f"grad{i}") for i, t in enumerate(tensors)]
    fusion.flush()
    failures = []
    for i, h in enumerate(handles):
        got = to_host(fusion.synchronize(h))
        want = sum(inputs[r][i].astype(np.float64) for r in range(size))
        if got.shape != want.shape or not np.array_equal(got, want.astype(got.dtype)):
            failures.append(f"tensor {i}: got {got.ravel()[:3]} expected {want.ravel()[:3]}")
    expected = expected_collectives(inputs[rank])
    if fusion.stats["allreduces"] != expected:
        failures.append(f"{fusion.stats['allreduces']} collectives, expected {expected}")
    group.destroy()
    report(rank, failures=failures, collectives=fusion.stats["allreduces"], tensors=len(tensors))


if __name__ == "__main__":
    main()
