"""Data-parallel training: DDP's bucketing rule, the Reducer's contract, Horovod-style fusion,
and the DDP example under ``mpiexec -n 2`` following the one-rank loss curve."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from mpi_common import ROOT, mpiexec, run_mpi

from streamq.cuda_facade import nccl, to_device, to_host
from streamq.cuda_facade import runtime as rt
from streamq.distributed import ProcessGroup, Reducer, TensorFusion, assign_buckets

MB = 1 << 20
needs_mpiexec = pytest.mark.skipif(mpiexec() is None, reason="mpiexec not found (pip install mpich)")


def test_buckets_are_filled_from_the_last_parameter():
    # DDP's rule: reverse order; a bucket closes once it reaches its cap; the first cap is smaller.
    sizes = [400, 100, 300, 300, 200, 600]          # bytes of params 0..5
    dtypes = [np.float32] * 6
    assert assign_buckets(sizes, dtypes, cap_bytes=700, first_cap_bytes=500) == [[5], [4, 3, 2], [1, 0]]
    assert assign_buckets(sizes, dtypes, cap_bytes=10_000, first_cap_bytes=10_000) == [[5, 4, 3, 2, 1, 0]]
    # A dtype change closes the bucket (one dtype per bucket).
    mixed = [np.float32, np.float32, np.float64, np.float64, np.float32, np.float32]
    assert assign_buckets(sizes, mixed, cap_bytes=10_000, first_cap_bytes=10_000) == [[5, 4], [3, 2], [1, 0]]
    with pytest.raises(ValueError):
        assign_buckets(sizes, dtypes, cap_bytes=0, first_cap_bytes=1)


@pytest.fixture(scope="module")
def group():
    status, uid = nccl.ncclGetUniqueId()
    status, comm = nccl.ncclCommInitRank(1, uid, 0)
    assert status == nccl.ncclResult_t.ncclSuccess
    g = ProcessGroup(comm, 0, 1)
    yield g
    g.destroy()


@pytest.fixture
def stream():
    err, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
    yield s
    rt.cudaStreamSynchronize(s)
    rt.cudaStreamDestroy(s)


def _params():
    # 4 + 8 + 4096 + 16 float32 elements: with a 1 KiB first cap, bucket 0 = [3, 2] (reaching 16 KiB),
    # bucket 1 = [1, 0].
    return [to_device(np.full(shape, i + 1, np.float32)) for i, shape in enumerate([(4,), (2, 4), (64, 64), (16,)])]


@pytest.mark.parametrize("separate_stream", [False, True])
def test_reducer_buckets_views_and_launch_order(group, stream, separate_stream):
    comm_stream = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)[1] if separate_stream else None
    params = _params()
    reducer = Reducer(params, group, compute_stream=stream, comm_stream=comm_stream, bucket_cap_mb=1,
                      first_bucket_cap_mb=1 / 1024)
    assert [b.params for b in reducer.buckets] == [[3, 2], [1, 0]]
    for i, (p, g) in enumerate(zip(params, reducer.grads)):
        assert g.shape == p.shape and g.dtype == p.dtype
        assert np.shares_memory(g, reducer.buckets[reducer._bucket_of[i]].buffer)   # gradient_as_bucket_view
    for i, g in enumerate(reducer.grads):
        g[...] = 10 * (i + 1)
    # Bucket 1 becomes ready first; it must still be issued after bucket 0 (same order on every rank).
    reducer.mark_ready(0)
    reducer.mark_ready(1)
    assert reducer.launch_order == []
    reducer.mark_ready(3)
    reducer.mark_ready(2)
    assert reducer.launch_order == [0, 1]
    reducer.finalize()
    assert reducer.last_launch_order == [0, 1]
    assert rt.cudaStreamSynchronize(stream)[0] == 0
    # One rank: the average over ranks is the gradient itself.
    assert [float(to_host(g).ravel()[0]) for g in reducer.grads] == [10, 20, 30, 40]


def test_reducer_errors(group, stream):
    params = _params()
    reducer = Reducer(params, group, compute_stream=stream, first_bucket_cap_mb=1 / 1024)
    reducer.mark_ready(3)
    with pytest.raises(RuntimeError, match="marked ready twice"):
        reducer.mark_ready(3)
    reducer.mark_ready(2)
    with pytest.raises(RuntimeError, match=r"parameters \[0, 1\] received no gradient"):
        reducer.finalize()
    with pytest.raises(IndexError):
        reducer.mark_ready(4)
    with pytest.raises(TypeError, match="params\\[0\\]"):
        Reducer([np.zeros(3, np.int32)], group, compute_stream=stream)
    with pytest.raises(ValueError):
        Reducer([], group, compute_stream=stream)
    rt.cudaStreamSynchronize(stream)


def test_fusion_single_rank_counts_and_values(group, stream):
    fusion = TensorFusion(group, stream, threshold_mb=1 / 1024, op=nccl.ncclRedOp_t.ncclSum)   # 1 KiB
    values = [np.arange(n, dtype=np.float32) + n for n in (10, 20, 300, 5)]     # 40, 80, 1200, 20 bytes
    tensors = [to_device(v) for v in values]
    handles = [fusion.allreduce_async(t, name=f"t{i}") for i, t in enumerate(tensors)]
    # The third tensor takes the queue past 1 KiB: flush -> [t0, t1] fused (120 B), t2 alone (1200 B).
    assert fusion.stats["allreduces"] == 2
    fusion.flush()                          # t3 alone
    assert fusion.stats["allreduces"] == 3 and fusion.stats["tensors"] == 4
    for h, v in zip(handles, values):
        assert to_host(fusion.synchronize(h)).tolist() == v.tolist()   # a sum over one rank
    with pytest.raises(ValueError, match="already queued"):
        fusion.allreduce_async(tensors[0], name="x")
        fusion.allreduce_async(tensors[1], name="x")
    with pytest.raises(TypeError):
        fusion.allreduce_async(np.zeros(3, np.complex64))
    fusion.flush()
    rt.cudaStreamSynchronize(stream)


@needs_mpiexec
def test_fusion_across_ranks():
    results, proc = run_mpi("mpi_fusion.py", 2, timeout=150)
    assert sorted(results) == [0, 1], proc.stdout + proc.stderr
    for result in results.values():
        assert result["failures"] == []
        assert result["collectives"] < result["tensors"]      # fused


@needs_mpiexec
def test_ddp_example_follows_the_one_rank_loss_curve(tmp_path):
    # examples/ddp_resnet.py under mpiexec -n 2: data-parallel training must follow the loss
    # curve of one rank training on the combined batches, to float tolerance; training on one
    # rank's share alone must not (so the comparison can tell).
    out = tmp_path / "figures.json"
    example = os.path.join(ROOT, "examples", "ddp_resnet.py")
    results, proc = run_mpi(example, 2, "--steps", "4", "--width", "64", "--depth", "2", "--batch", "16",
                            "--first-bucket-mb", "0.01", "--log", str(tmp_path / "ddp"), "--json", str(out),
                            timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["ranks"] == 2 and len(figures["losses"]) == 4
    assert figures["max_rel_diff"] < 1e-5
    assert figures["alone_rel_diff"] > 1e-4
    assert figures["launch_order"] == list(range(len(figures["buckets"])))
    assert figures["overlap"]["count"] == 4 * len(figures["buckets"])
    assert 0.0 <= figures["overlap"]["fraction"] <= 1.0
    assert "timeline of the last step" in proc.stdout
