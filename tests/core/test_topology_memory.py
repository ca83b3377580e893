"""CMG detection, STREAMQ_TOPOLOGY overrides, pinning, thread limits and NUMA placement."""

import json
import os

import numpy as np
import pytest

import streamq
from streamq.topology import TopologyError, detect_topology, format_cpu_list, parse_cpu_list

pytestmark = pytest.mark.timeout(120)


def test_cpu_list_parsing_round_trips():
    assert parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpu_list((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    with pytest.raises(TopologyError):
        parse_cpu_list("3-1")
    with pytest.raises(TopologyError):
        parse_cpu_list("a")


def test_detected_topology_covers_the_allowed_cpus_once():
    cmgs = streamq.topology()
    cpus = [c for cmg in cmgs for c in cmg.cpus]
    assert sorted(cpus) == sorted(os.sched_getaffinity(0))
    assert [c.index for c in cmgs] == list(range(len(cmgs)))


def test_override_parsing(monkeypatch):
    allowed = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("STREAMQ_TOPOLOGY", f"{len(allowed)}x1")
    cmgs = detect_topology()
    assert [c.cpus for c in cmgs] == [(c,) for c in allowed]
    monkeypatch.setenv("STREAMQ_TOPOLOGY", ";".join(str(c) for c in allowed))
    assert [c.cpus for c in detect_topology()] == [(c,) for c in allowed]
    monkeypatch.setenv("STREAMQ_TOPOLOGY", f"{len(allowed) + 1}x1")
    with pytest.raises(TopologyError, match="needs"):
        detect_topology()
    monkeypatch.setenv("STREAMQ_TOPOLOGY", "0;0")
    with pytest.raises(TopologyError, match="two CMGs"):
        detect_topology()
    monkeypatch.setenv("STREAMQ_TOPOLOGY", "banana")
    with pytest.raises(TopologyError):
        detect_topology()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_two_cmgs_pin_their_workers_to_their_cpus(python_subprocess):
    out = python_subprocess("""
        import json, os, streamq
        cmgs = streamq.topology()
        seen = {}
        for cmg in cmgs:
            q = streamq.Queue(cmg=cmg.index)
            seen[cmg.index] = q.submit(lambda: (sorted(os.sched_getaffinity(0)),
                                                streamq.current_cmg().index)).result(timeout=10)
        print(json.dumps({"cmgs": [list(c.cpus) for c in cmgs], "seen": seen}))
    """, env={"STREAMQ_TOPOLOGY": "2x1"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    allowed = sorted(os.sched_getaffinity(0))
    assert data["cmgs"] == [[allowed[0]], [allowed[1]]]
    assert data["seen"] == {"0": [[allowed[0]], 0], "1": [[allowed[1]], 1]}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_synchronizing_host_thread_runs_items_pinned_to_each_queues_cmg(python_subprocess):
    # synchronize() lends the waiting thread to the queue's CMG while it runs pending items:
    # pinned to that CMG's CPUs and reporting it, then restored - every time, alternating
    # CMGs, numba loaded or not (the lend caches what it found per thread).
    out = python_subprocess("""
        import json, os, sys, threading, streamq
        queues = [streamq.Queue(cmg=i) for i in range(2)]
        main, seen = threading.get_ident(), []
        def probe():
            seen.append((threading.get_ident() == main, sorted(os.sched_getaffinity(0)),
                         streamq.current_cmg().index))
        after = []
        for round in range(3):
            if round == 2:
                import numba  # noqa: F401 - a lend must notice numba appearing
            for q in queues * 2:
                q.submit(probe)
                q.synchronize()
                after.append((sorted(os.sched_getaffinity(0)), streamq.current_cmg()))
        print(json.dumps({"seen": seen, "after": [[a, c is None] for a, c in after]}))
    """, env={"STREAMQ_TOPOLOGY": "2x1"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    allowed = sorted(os.sched_getaffinity(0))
    on_host = [(cpus, cmg) for here, cpus, cmg in data["seen"] if here]
    assert len(data["seen"]) == 12 and on_host      # an idle queue's item usually runs on the host
    for here, cpus, cmg in data["seen"]:
        assert cpus == [allowed[cmg]]                # on the host or a worker: the queue's CMG only
    assert [cmg for _, _, cmg in data["seen"]] == [0, 1, 0, 1] * 3
    assert data["after"] == [[allowed, True]] * 12   # the host's own affinity and CMG come back


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_thread_limits_hold_blas_and_numba_within_a_cmg(python_subprocess):
    out = python_subprocess("""
        import json, numba, numpy, streamq
        from threadpoolctl import threadpool_info
        q = streamq.Queue(cmg=1)
        blas = q.submit(lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]).result()
        nb = q.submit(numba.get_num_threads).result()
        print(json.dumps({"blas": blas, "numba": nb, "main_numba": numba.get_num_threads()}))
    """, env={"STREAMQ_TOPOLOGY": "2x1"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["blas"] and all(n == 1 for n in data["blas"])
    assert data["numba"] == 1


def test_empty_and_zeros_place_pages_on_the_cmgs_node():
    cmg = streamq.topology()[0]
    z = streamq.zeros((512, 1024), np.float32, cmg=0)
    assert z.shape == (512, 1024) and z.dtype == np.float32 and not z.any()
    e = streamq.empty(1 << 20, np.uint8, cmg=cmg)
    assert e.shape == (1 << 20,) and e.flags.writeable and e.flags.c_contiguous
    try:
        nodes = set(streamq.numa_node_of(z))
    except RuntimeError:
        pytest.skip("libnuma not available")
    if cmg.numa_node is not None:
        assert nodes == {cmg.numa_node}


def test_small_arrays_and_bad_arguments():
    small = streamq.zeros(3, np.int64, cmg=0)
    assert small.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="cmg"):
        streamq.empty(10, cmg=42)
    with pytest.raises(ValueError, match="negative"):
        streamq.empty((-1, 2))


def test_zeros_from_inside_a_worker_touches_inline():
    q = streamq.Queue(cmg=0)
    arr = q.submit(streamq.zeros, (256, 1024), np.float64).result(timeout=10)
    assert arr.sum() == 0.0 and arr.shape == (256, 1024)
