"""streamq in one page: streams as queues, events across them, apply, and the queue log.

Run: python examples/quickstart.py   (writes quickstart-log.jsonl beside where you run it)
"""

import collections
import json
import time

import numpy as np

import streamq


def main() -> None:
    cmgs = streamq.topology()
    print("Machine as CMGs:")
    for cmg in cmgs:
        print("  ", cmg)

    log_path = "quickstart-log.jsonl"
    streamq.trace.enable(log_path)

    # One "stream" per CMG: serial queues whose workers are pinned to that CMG.
    streams = [streamq.Queue(f"stream{c.index}", cmg=c.index) for c in cmgs]
    n = 512
    a = [streamq.zeros((n, n), np.float32, cmg=c.index) for c in cmgs]
    b = [np.random.default_rng(c.index).standard_normal((n, n)).astype(np.float32) for c in cmgs]
    out = [np.empty((n, n), np.float32) for _ in cmgs]

    t0 = time.perf_counter()
    for s, ai, bi, oi in zip(streams, a, b, out):
        s.submit(np.add, ai, 1.0, out=ai, reads=[ai], writes=[ai])            # a = a + 1
        s.submit(np.matmul, ai, bi, out=oi, reads=[ai, bi], writes=[oi])      # out = a @ b
    # The last stream waits (on the device, not the host) for every other stream's work.
    done = [s.record_event() for s in streams]
    final = streams[-1]
    for e in done[:-1]:
        final.wait_event(e)
    total = final.submit(lambda: float(sum(o.sum() for o in out)), reads=out)
    expected = float(sum((np.ones((n, n), np.float32) @ bi).sum() for bi in b))
    print(f"\nSum over {len(streams)} streams: {total.result():.1f} (numpy says {expected:.1f})")
    print(f"Elapsed: {(time.perf_counter() - t0) * 1e3:.1f} ms")

    # dispatch_apply: a parallel loop on the CMG's workers, the caller taking part.
    squares = np.zeros(16)
    streamq.global_queue().apply(16, lambda i: squares.__setitem__(i, i * i))
    print("apply:", squares.astype(int).tolist())

    # Failures reach whoever waits, and dependents don't run.
    bad = streams[0].submit(lambda: 1 / 0)
    skipped = streams[-1].submit(print, "never printed", after=bad)
    print("dependent of a failed task:", type(skipped.exception()).__name__)
    bad.exception()

    for s in streams:
        s.synchronize()
    streamq.trace.disable()
    with open(log_path) as f:
        records = [json.loads(line) for line in f]
    kinds = collections.Counter(r.get("kind", r["type"]) for r in records)
    print(f"\nQueue log {log_path}: {len(records)} records; by kind: {dict(kinds)}")
    task = next(r for r in records if r["type"] == "task" and r["name"].endswith("matmul"))
    print("one record:", json.dumps({k: task[k] for k in ("name", "label", "cmg", "start_us", "end_us",
                                                          "reads", "writes")})[:300], "...")


if __name__ == "__main__":
    main()
