"""Queue-log cost: tasks with the log on vs off, the hot-path append, the writer's time per record.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_trace.py [--write FILE.md]

Figures are the best of several repeats; each has its peer measured in the same run:
- 100k no-op tasks on a serial queue (submit, then synchronize) with the log off vs on, and on with
  the schema-v1 writer swapped back in;
- the hot path (``_Sink.task``: what a worker pays per finished task) vs a bare deque append;
- the background writer's CPU time per record: today's batched row writer vs the schema-v1 writer
  it replaced (a dict per record, one orjson call and two writes each), on the same captured
  records, for no-op tasks and for tasks declaring two numpy buffers;
- the writer thread's own CPU time per record during the 100k-task run (``writer_cpu_ns``);
- the offline analyzer's CPU time per record (``streamq fusion``) vs only reading and parsing the log.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import streamq  # noqa: E402
from streamq import trace  # noqa: E402

N_TASKS = 100_000
REPEATS = 5


def noop(*_args):
    pass


def best(fn, repeats=REPEATS):
    return min(fn() for _ in range(repeats))


def blas_info() -> str:
    from threadpoolctl import threadpool_info
    return str([(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
                if i["user_api"] == "blas"])


def tasks_on_off(tmp):
    """µs per no-op task (submit + run + synchronize): log off, on, and on with the v1 writer.

    The three are interleaved repeat by repeat (the machine's load drifts), best of each kept.
    Also returns the writer thread's CPU µs per record over the "on" runs.
    """
    q = streamq.Queue("bench")

    def once():
        t0 = time.perf_counter()
        for _ in range(N_TASKS):
            q.submit(noop)
        q.synchronize()
        return (time.perf_counter() - t0) / N_TASKS * 1e6

    def logged(path, v1: bool):
        trace.enable(path)
        sink = trace._sink
        if v1:
            sink._rows = lambda entries: v1_write(sink, entries)   # the writer this one replaced
        try:
            return once(), sink
        finally:
            trace.flush()
            trace.disable()

    once()  # warm the workers
    off, on, on_v1 = [], [], []
    cpu_ns = records = 0
    for r in range(REPEATS):
        off.append(once())
        t, sink = logged(os.path.join(tmp, f"on{r}.jsonl"), False)
        on.append(t)
        cpu_ns += sink.writer_cpu_ns
        records += sink.records
        on_v1.append(logged(os.path.join(tmp, f"v1-{r}.jsonl"), True)[0])
    return min(off), min(on), min(on_v1), cpu_ns / max(records, 1) / 1e3


def v1_write(sink, entries) -> list:
    """The schema-v1 writer: per record a dict, an orjson call and two file writes."""
    for _tag, task, start_ns, end_ns, thread, worker in (e for e in entries if e[0] is trace._TASK):
        rec = _v1_task_record(sink, task, start_ns, end_ns, thread,
                              None if worker is None else worker.pool.cmg.index)
        sink.file.write(trace._dumps(rec))
        sink.file.write(b"\n")
    return []


def hot_path(tmp, n=500_000):
    """ns per call of the sink's task() (with the writer running) vs appending the same tuple."""
    q = streamq.Queue("hot")
    task = q.submit(noop)
    task.result()
    trace.enable(os.path.join(tmp, "hot.jsonl"))
    sink = trace._sink
    now = time.perf_counter_ns()
    calls = range(n)

    def sink_loop():
        t0 = time.thread_time_ns()   # this thread's CPU: not the GIL waits on the writer
        for _ in calls:
            sink.task(task, now, now, None)
        dt = (time.thread_time_ns() - t0) / n
        trace.flush()
        return dt

    bare = deque()

    def bare_loop():
        append, tag = bare.append, object()
        t0 = time.thread_time_ns()
        for _ in calls:
            append((tag, task, now, now, 1, None))
        dt = (time.thread_time_ns() - t0) / n
        bare.clear()
        return dt

    sink_ns = best(sink_loop)
    bare_ns = best(bare_loop)
    trace.disable()
    return sink_ns, bare_ns


def captured_entries(tmp, buffers: bool, n=50_000):
    """Real hot-path entries of ``n`` finished tasks (with 0 or 2 declared numpy buffers)."""
    q = streamq.Queue("capture")
    trace.enable(os.path.join(tmp, "capture.jsonl"))
    sink = trace._sink
    captured = []
    sink.task = lambda *a: captured.append(a)   # instance attribute shadows the method
    a = np.ones((256, 256), np.float32)
    b = np.empty_like(a)
    for _ in range(n):
        if buffers:
            q.enqueue(noop, (), None, name="aten::relu", kind="kernel", reads=[a], writes=[b])
        else:
            q.submit(noop)
    q.synchronize()
    del sink.task
    ident = threading.get_ident()
    return sink, [(trace._TASK, task, start, end, ident, worker) for task, start, end, worker in captured]


def v1_rows(sink, entries) -> int:
    """The schema-v1 writer this one replaced: one dict, one orjson call, two writes per record."""
    out = open(os.devnull, "wb")
    for _tag, task, start_ns, end_ns, thread, worker in entries:
        rec = _v1_task_record(sink, task, start_ns, end_ns, thread,
                              None if worker is None else worker.pool.cmg.index)
        out.write(trace._dumps(rec))
        out.write(b"\n")
    out.close()
    return len(entries)


def _v1_task_record(sink, task, start_ns, end_ns, thread, cmg) -> dict:
    queue = task.queue
    sink._queue_rows(queue, [])
    exc = task._exception
    if task.cancelled():
        status = "cancelled"
    elif exc is None:
        status = "ok"
    else:
        status = "error"
    return {"type": "task", "id": task.id, "queue": queue.id, "label": queue.label, "cmg": cmg,
            "thread": thread, "name": task.name or trace._qualname(task.fn) or task.kind,
            "kind": task.kind, "submit_us": sink._us(task._tsub) if task._tsub else None,
            "start_us": sink._us(start_ns), "end_us": sink._us(end_ns),
            "deps": [getattr(d, "id", None) for d in task._deps],
            "reads": [sink._buffer(b) for b in task.reads],
            "writes": [sink._buffer(b) for b in task.writes], "status": status}


def new_rows(sink, entries) -> int:
    out = open(os.devnull, "wb")
    for i in range(0, len(entries), trace._BATCH):
        out.write(b"".join(sink._rows(entries[i:i + trace._BATCH])))
    out.close()
    return len(entries)


def writer_cost(tmp, buffers: bool):
    """µs of CPU per record: new writer vs v1 writer, same entries."""
    sink, entries = captured_entries(tmp, buffers)

    def timed(fn):
        def once():
            t0 = time.thread_time_ns()
            n = fn(sink, entries)
            return (time.thread_time_ns() - t0) / n / 1e3
        return once

    new = best(timed(new_rows))
    old = best(timed(v1_rows))
    trace.disable()
    return new, old


def analyzer_throughput(tmp, iterations=20_000):
    """µs per record: ``streamq fusion``'s analysis vs only reading and parsing the same log."""
    from streamq.analysis import analyze
    from streamq.analysis.reader import Diagnostics, read_records
    path = os.path.join(tmp, "gen.jsonl")
    v = '{"buffer":%d,"offset":0,"dtype":"<f4","shape":[1024],"strides":[4],"bytes":4096}'
    row = ('{"type":"task","id":%d,"queue":1,"label":"s0","cmg":0,"thread":7,"name":"%s","kind":"kernel",'
           '"submit_us":%.3f,"start_us":%.3f,"end_us":%.3f,"deps":[],"reads":[%s],"writes":[%s],'
           '"status":"ok"}\n')
    with open(path, "w") as f:
        f.write('{"type":"queue","queue":1,"label":"s0","concurrent":false,"cmg":0}\n')
        t, n = 0.0, 0
        for i in range(iterations):
            tmp_buf = 0x100000 + (i % 8) * 0x10000
            for name, reads, writes in (("aten::mul", (1, 2), (tmp_buf,)), ("aten::add", (tmp_buf, 2), (3,)),
                                        ("aten::relu", (3,), (4,)), ("aten::sum", (4,), (5,))):
                n += 1
                f.write(row % (n, name, t, t + 1, t + 3, ",".join(v % r for r in reads),
                               ",".join(v % w for w in writes)))
                t += 4
    records = n + 1

    def parse_only():
        t0 = time.process_time()
        for _ in read_records(path, Diagnostics()):
            pass
        return (time.process_time() - t0) / records * 1e6

    def full():
        t0 = time.process_time()
        analyze(path)
        return (time.process_time() - t0) / records * 1e6

    return best(full, 3), best(parse_only, 3), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE.md", help="also write the table to this file")
    args = parser.parse_args()
    lines = [f"BLAS (threadpoolctl): {blas_info()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}",
             f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}, "
             f"load average {os.getloadavg()[0]:.2f}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        off, on, on_v1, writer_run = tasks_on_off(tmp)
        sink_ns, bare_ns = hot_path(tmp)
        w0_new, w0_old = writer_cost(tmp, buffers=False)
        w2_new, w2_old = writer_cost(tmp, buffers=True)
        an_full, an_parse, an_records = analyzer_throughput(tmp)
    lines += [
        "| benchmark | streamq | peer | ratio |",
        "|---|---|---|---|",
        f"| 100k no-op tasks, serial queue, log on vs off | on: {on:.2f} µs/task | off: {off:.2f} µs/task "
        f"| +{on - off:.2f} µs/task |",
        f"| the same, log on with the v1 writer (peer) | v1 on: {on_v1:.2f} µs/task | off: {off:.2f} µs/task "
        f"| +{on_v1 - off:.2f} µs/task |",
        f"| hot path per record (`_Sink.task`, writer running) | {sink_ns:.0f} ns | bare deque append of "
        f"the same tuple: {bare_ns:.0f} ns | +{sink_ns - bare_ns:.0f} ns |",
        f"| writer CPU per record, no-op task | {w0_new:.2f} µs | v1 writer: {w0_old:.2f} µs "
        f"| {w0_old / w0_new:.1f}x less |",
        f"| writer CPU per record, task with 2 numpy buffers | {w2_new:.2f} µs | v1 writer: {w2_old:.2f} µs "
        f"| {w2_old / w2_new:.1f}x less |",
        f"| writer thread CPU per record in the 100k-task run | {writer_run:.2f} µs | | |",
        f"| `streamq fusion` analysis, {an_records} records (4-op loop) | {an_full:.1f} µs/record "
        f"({1e6 / an_full / 1e3:.0f}k records/s) | reading + parsing only: {an_parse:.1f} µs/record "
        f"| {an_full / an_parse:.1f}x the parse |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
