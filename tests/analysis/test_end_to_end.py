"""Real streamq queues with the queue log on, analysed: the chain, the event ordering, a real race."""

import json

import numpy as np
import pytest
from logbuilder import check_chrome

import streamq
from streamq import trace
from streamq.analysis import analyze, plan
from streamq.analysis.chrome import write_chrome

pytestmark = pytest.mark.timeout(120)

N = 1 << 16


def kernel(queue, fn, args, kwargs, name, reads, writes):
    return queue.enqueue(fn, args, kwargs, name=name, kind="kernel", reads=reads, writes=writes)


def test_log_of_real_queues_is_analysed(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random(N, dtype=np.float32), rng.random(N, dtype=np.float32)
    t1, t2, out, shared = (np.empty(N, np.float32) for _ in range(4))
    total = np.zeros(1, np.float32)
    path = tmp_path / "run.jsonl"
    trace.enable(path)
    try:
        s0, s1 = streamq.Queue("s0"), streamq.Queue("s1")
        for _ in range(3):
            kernel(s0, np.multiply, (x, y), {"out": t1}, "aten::mul", [x, y], [t1])
            kernel(s0, np.add, (t1, y), {"out": t2}, "aten::add", [t1, y], [t2])
            kernel(s0, np.maximum, (t2, 0), {"out": out}, "aten::relu", [t2], [out])
            s1.wait_event(s0.record_event())
            kernel(s1, np.sum, (out,), {"out": total[0:1].reshape(())}, "aten::sum", [out], [total])
            s0.wait_event(s1.record_event())      # the next iteration rewrites out: wait for the sum
        # a deliberate race: both queues write `shared`, nothing orders them
        kernel(s0, np.copyto, (shared, x), {}, "aten::copy_", [x], [shared])
        kernel(s1, np.copyto, (shared, y), {}, "aten::copy_", [y], [shared])
        s0.synchronize()
        s1.synchronize()
    finally:
        trace.disable()
    a = analyze(path)
    assert a.diagnostics.count == 0
    chains = [f for f in a.findings if f.kind == "vertical"]
    assert [(f.ops, f.queue, f.occurrences) for f in chains] == [
        (("aten::mul", "aten::add", "aten::relu"), "s0", 3)]
    assert chains[0].saved_bytes == 3 * 2 * (2 * 4 * N)
    assert a.near_misses == []   # relu -> sum has two blockers (another queue, a reduction)
    (race,) = a.races
    assert {race["first"]["queue"], race["second"]["queue"]} == {"s0", "s1"}
    assert race["first"]["op"] == race["second"]["op"] == "aten::copy_"
    assert race["first"]["access"] == race["second"]["access"] == "write"
    addr = shared.__array_interface__["data"][0]
    assert race["examples"][0]["buffer"] == addr and race["examples"][0]["bytes"] == [0, 4 * N]
    assert plan(a)["chains"][0]["queue_label"] == "s0"
    out_json = tmp_path / "trace.json"
    write_chrome(path, out_json)
    events, flows = check_chrome(json.loads(out_json.read_text()))
    assert sum(1 for key in flows if key[1] == "event") == 6     # 3 iterations x 2 waits
