"""Chrome trace (validated structurally), --summary figures, and the timeline plot."""

import gzip
import json
import sys
from collections import Counter

import pytest
from logbuilder import LogBuilder, check_chrome, view

from streamq.analysis.chrome import PID_QUEUES, write_chrome
from streamq.analysis.summary import summarize, summary_text

pytestmark = pytest.mark.timeout(60)


def sample_log(tmp_path):
    """Two serial queues joined by an event, a concurrent queue on two threads, syncs, memory."""
    b = LogBuilder()
    s0, s1 = b.queue("s0"), b.queue("s1")
    pool = b.queue("pool", concurrent=True, cmg=1)
    b.alloc(0x1000, 4096)
    b.op(s0, "aten::mul", reads=[view(0x1000, (1024,))], writes=[view(0x2000, (1024,))], dur=20.0)
    b.op(s0, "aten::relu", reads=[view(0x2000, (1024,))], writes=[view(0x3000, (1024,))], dur=10.0)
    marker, _ = b.record_event(s0, "e")
    b.wait_event(s1, "e", marker)
    b.op(s1, "aten::relu", reads=[view(0x3000, (1024,))], writes=[view(0x4000, (1024,))], thread=101,
         dur=10.0)
    t = b.t
    b.op(pool, "host_fn", kind="host", submit=t, start=t + 1, dur=50.0, thread=201)
    b.op(pool, "host_fn", kind="host", submit=t, start=t + 2, dur=50.0, thread=202)   # overlaps
    b.host_sync("queue.synchronize", queue=s1)
    b.host_access("host_read", 0x4000, 4096)
    b.records.append({"type": "range", "name": "step", "thread": 1, "start_us": 0.0, "end_us": b.t + 1})
    b.free(0x1000)
    return b.write(tmp_path / "log.jsonl")


def test_chrome_trace_is_structurally_valid(tmp_path):
    log = sample_log(tmp_path)
    out = tmp_path / "trace.json"
    stats = write_chrome(log, out)
    doc = json.loads(out.read_text())
    events, flows = check_chrome(doc)
    assert stats["events"] == len(events) and stats["ops"] == 7
    ops = [e for e in events if e["ph"] == "X" and e["pid"] == PID_QUEUES and e["cat"] != "submit"]
    assert Counter(e["name"] for e in ops) == {"aten::relu": 2, "aten::mul": 1, "host_fn": 2, "e": 2}
    mul = next(e for e in ops if e["name"] == "aten::mul")
    assert mul["dur"] == 20.0 and mul["args"]["bytes_read"] == 4096 and mul["args"]["line"] == 6
    assert mul["args"]["reads"][0]["buffer"] == 0x1000 and mul["args"]["GB/s"] == pytest.approx(0.41, abs=0.01)
    cats = Counter(k[1] for k in flows)
    assert cats["event"] == 1 and cats["submit"] == 7
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"s0", "s1", "pool (concurrent) · thread 201", "pool (concurrent) · thread 202"} <= names
    assert any(e["ph"] == "X" and e["cat"] == "sync" for e in events)
    assert any(e["ph"] == "i" and e["name"] == "host_read" for e in events)
    counters = [e["args"]["bytes"] for e in events if e["ph"] == "C"]
    assert counters == [4096, 0]


def test_chrome_gzip_output_and_damaged_input(tmp_path):
    log = sample_log(tmp_path)
    with open(log, "a") as f:
        f.write('{"type": "task", "queue": 1, "start_us": ')   # truncated last line
    out = tmp_path / "trace.json.gz"
    from streamq.analysis import Diagnostics
    diag = Diagnostics()
    write_chrome(log, out, diagnostics=diag)
    check_chrome(json.loads(gzip.decompress(out.read_bytes())))
    assert diag.count == 1
    with pytest.raises(FileNotFoundError):
        write_chrome(tmp_path / "nope.jsonl", out)


def test_summary_figures(tmp_path):
    log = sample_log(tmp_path)
    s = summarize(log, min_gap_us=0.5)
    relu = s["ops"]["aten::relu"]
    assert relu["count"] == 2 and relu["total_us"] == 20.0 and relu["mean_us"] == 10.0
    assert relu["bytes"] == 2 * 8192 and relu["gb_s"] == pytest.approx(16384 / 20.0 / 1e3, abs=1e-3)
    assert relu["kind"] == "elementwise"
    assert list(s["ops"])[0] == "host_fn"          # most total time first
    assert s["queues"]["s0"] == {"ops": 2, "busy_us": 30.0}
    cmg0 = s["cmgs"]["0"]
    # every task ran on CMG 0: mul [2, 22], relu [23, 33], (event record and wait are not work),
    # relu [36, 46], the two pool tasks [47, 97] and [48, 98]: busy 91 µs, gaps of 1, 3 and 1 µs
    assert cmg0["ops"] == 5 and cmg0["cores"] == 2
    assert cmg0["span_us"] == pytest.approx(96.0) and cmg0["busy_us"] == pytest.approx(91.0)
    assert cmg0["idle_us"] == pytest.approx(5.0)
    assert cmg0["gaps"] == 3 and cmg0["longest_gap_us"] == pytest.approx(3.0)
    assert cmg0["longest_gap_at_us"] == pytest.approx(33.0)
    assert cmg0["busy_fraction"] == pytest.approx((20 + 10 + 10 + 50 + 50) / (96.0 * 2), abs=1e-4)
    assert summarize(log, min_gap_us=2.0)["cmgs"]["0"]["gaps"] == 1
    assert s["host_syncs"]["queue.synchronize"]["count"] == 1
    text = summary_text(s)
    assert "aten::relu" in text and "gaps" in text
    with pytest.raises(ValueError, match="min_gap_us"):
        summarize(log, min_gap_us=-1)


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from streamq.analysis.plot import COLOURS, plot_timeline
    from streamq.analysis.opkinds import KINDS
    assert set(COLOURS) == set(KINDS)
    b = LogBuilder()
    q = b.queue("s")
    for _ in range(2):
        b.op(q, "aten::mul", reads=[view(1, (64,))], writes=[view(2, (64,))])
        b.op(q, "aten::relu", reads=[view(2, (64,))], writes=[view(3, (64,))])
        b.op(q, "aten::sum", reads=[view(3, (64,))], writes=[view(4, (1,))])
    out = tmp_path / "t.png"
    stats = plot_timeline(b.write(tmp_path / "log.jsonl"), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats == {"ops": 6, "left_out": 0, "highlighted": 4, "lanes": 1}
    stats = plot_timeline(tmp_path / "log.jsonl", out, max_ops=2, highlight=False)
    assert stats["ops"] == 2 and stats["left_out"] == 4 and stats["highlighted"] == 0


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from streamq.analysis.plot import plot_timeline
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_timeline(tmp_path / "log.jsonl", tmp_path / "t.png")


def test_idle_gap_union_matches_a_full_sort():
    import random
    from streamq.analysis.summary import _Union
    rng = random.Random(1)
    spans, t = [], 0.0
    for _ in range(5000):
        t += rng.choice([0.0, 0.5, 2.0, 150.0])
        spans.append((t, t + rng.uniform(0.1, 30.0)))
    fed = sorted(spans, key=lambda s: s[1])          # arrival in end order, as the log gives them
    u = _Union(min_gap=100.0)
    for s, e in fed:
        u.add(s, e)
    got = u.close()
    merged = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    gaps = [b[0] - a[1] for a, b in zip(merged, merged[1:])]
    assert got["busy_us"] == pytest.approx(sum(e - s for s, e in merged), abs=1e-3)
    assert got["idle_us"] == pytest.approx(sum(gaps), abs=1e-3)
    assert got["gaps"] == sum(g >= 100.0 for g in gaps)
    assert got["longest_gap_us"] == pytest.approx(max(gaps), abs=1e-3)
