"""The streaming reader (damaged lines, gzip, time order), buffer views, and the op-kind table."""

import gzip
import json

import pytest

from streamq.analysis.opkinds import FUSABLE, KINDS, OP_KINDS, classify
from streamq.analysis.reader import Diagnostics, in_time_order, order_key, read_records
from streamq.analysis.views import host_view, parse_view

pytestmark = pytest.mark.timeout(60)

TASK = {"type": "task", "id": 1, "queue": 1, "label": "q", "name": "aten::add", "kind": "kernel",
        "submit_us": 0.5, "start_us": 1.0, "end_us": 2.0, "deps": [], "reads": [], "writes": [],
        "status": "ok"}


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(lines))
    return path


def test_damaged_lines_are_reported_with_their_numbers_and_skipped(tmp_path):
    lines = [json.dumps({"type": "meta", "version": 1}) + "\n",   # 1
             json.dumps(TASK) + "\n",                               # 2
             "{not json\n",                                         # 3
             "[1, 2]\n",                                            # 4
             json.dumps({"queue": 1}) + "\n",                       # 5 no type
             json.dumps(dict(TASK, start_us="soon")) + "\n",        # 6 bad time
             "\n",                                                  # 7 blank: ignored
             json.dumps(dict(TASK, end_us=0.5)) + "\n",             # 8 ends before start
             json.dumps({"type": "alloc", "buffer": 1, "t_us": 1.0, "bytes": -4}) + "\n",  # 9
             json.dumps({"type": "something_new", "x": 1}) + "\n",  # 10 unknown type: kept
             json.dumps(dict(TASK, id=2))[:40]]                     # 11 truncated, no newline
    diag = Diagnostics()
    got = list(read_records(write_lines(tmp_path / "log.jsonl", lines), diag))
    assert [line for line, _ in got] == [1, 2, 10]
    assert [line for line, _ in diag.messages] == [3, 4, 5, 6, 8, 9, 11]
    msgs = dict(diag.messages)
    assert "invalid JSON" in msgs[3] and "not a JSON object" in msgs[4]
    assert "'type'" in msgs[5] and "start_us" in msgs[6] and "bytes" in msgs[9]
    assert msgs[11].startswith("truncated line")
    assert diag.count == 7
    assert any("log.jsonl:11: truncated line" in line for line in diag.lines("log.jsonl"))


def test_diagnostics_keep_the_first_messages_and_count_the_rest(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["garbage\n"] * 30)
    diag = Diagnostics(limit=5)
    assert list(read_records(path, diag)) == []
    assert diag.count == 30 and len(diag.messages) == 5
    assert diag.lines("bad")[-1] == "bad: ... and 25 more damaged lines"
    with pytest.raises(ValueError, match="limit"):
        Diagnostics(limit=-1)
    with pytest.raises(TypeError, match="diagnostics"):
        list(read_records(path, None))


def test_gzip_logs_and_truncated_gzip_streams(tmp_path):
    path = tmp_path / "log.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(100):
            f.write(json.dumps(dict(TASK, id=i)) + "\n")
    diag = Diagnostics()
    assert len(list(read_records(path, diag))) == 100 and diag.count == 0
    data = path.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    diag = Diagnostics()
    got = list(read_records(cut, diag))
    assert len(got) < 100 and diag.count >= 1   # reported, not raised
    with pytest.raises(FileNotFoundError):
        list(read_records(tmp_path / "missing.jsonl", Diagnostics()))


def test_time_order_puts_each_record_after_what_happened_before_it(tmp_path):
    recs = [dict(TASK, id=2, start_us=5.0, end_us=9.0),
            dict(TASK, id=1, start_us=1.0, end_us=4.0),
            dict(TASK, id=3, kind="event_record", start_us=4.0, end_us=4.0),
            dict(TASK, id=4, kind="event_wait", start_us=3.0, end_us=4.0),
            {"type": "host_sync", "what": "queue.synchronize", "start_us": 3.5, "end_us": 4.0},
            {"type": "queue", "queue": 1, "label": "q"}]
    diag = Diagnostics()
    out = list(in_time_order(((i + 1, r) for i, r in enumerate(recs)), diag, window=16))
    assert [r.get("id", r["type"]) for _, r in out] == ["queue", 1, 3, 4, "host_sync", 2]
    # a window too small to restore the order still yields everything, and says so
    out = list(in_time_order(((i + 1, r) for i, r in enumerate(recs)), diag, window=1))
    assert len(out) == len(recs) and diag.notes
    assert order_key(recs[0]) == (9.0, 0)
    with pytest.raises(ValueError, match="window"):
        list(in_time_order(iter(()), diag, window=0))


def test_view_spans_cover_exactly_the_bytes_touched():
    v = parse_view({"buffer": 7, "offset": 16, "dtype": "<f4", "shape": [2, 3], "strides": [12, 4],
                    "bytes": 24})
    assert (v.lo, v.hi) == (16, 40) and v.nbytes == 24
    rev = parse_view({"buffer": 7, "offset": 36, "dtype": "<f4", "shape": [3], "strides": [-4],
                      "bytes": 12})
    assert (rev.lo, rev.hi) == (28, 40)          # elements at 36, 32, 28
    bcast = parse_view({"buffer": 7, "offset": 8, "dtype": "<f8", "shape": [5, 4], "strides": [0, 8],
                        "bytes": 160})
    assert (bcast.lo, bcast.hi) == (8, 40)       # a broadcast row: 32 bytes touched
    empty = parse_view({"buffer": 7, "offset": 4, "dtype": "<f4", "shape": [0, 3], "strides": [12, 4],
                        "bytes": 0})
    assert empty.lo == empty.hi and not empty.overlaps(v)
    assert v.overlaps(rev) and rev.covers(parse_view({"buffer": 7, "offset": 32, "dtype": "<f4",
                                                      "shape": [1], "strides": [4], "bytes": 4}))
    other = parse_view({"buffer": 8, "offset": 16, "dtype": "<f4", "shape": [2, 3], "strides": [12, 4],
                        "bytes": 24})
    assert not v.overlaps(other) and v.sig != other.sig
    contiguous = parse_view({"buffer": 7, "offset": 16, "dtype": "<f4", "shape": [2, 3], "bytes": 24})
    assert contiguous.strides == (12, 4) and contiguous.sig == v.sig
    h = host_view(7, 30, 4)
    assert (h.lo, h.hi) == (30, 34) and h.overlaps(v)


@pytest.mark.parametrize("entry, field", [
    ({"offset": 0, "shape": [1]}, "buffer"),
    ({"buffer": [1], "shape": [1]}, "buffer"),
    ({"buffer": 1, "offset": 1.5, "shape": [1]}, "offset"),
    ({"buffer": 1, "offset": 0, "dtype": "<f4", "shape": [-1]}, "shape"),
    ({"buffer": 1, "offset": 0, "dtype": "<f4", "shape": [2, 2], "strides": [4]}, "strides"),
    ({"error": "cannot describe list"}, "could not be described"),
    ("not a dict", "object"),
])
def test_bad_views_raise_naming_the_field(entry, field):
    with pytest.raises(ValueError, match=field):
        parse_view(entry)
    with pytest.raises(ValueError, match="bytes"):
        host_view(1, 0, -1)


def test_every_kernel_registry_op_has_a_kind():
    from streamq.kernels import registry
    missing = sorted(set(registry.ops()) - set(OP_KINDS))
    assert missing == []
    assert set(OP_KINDS.values()) <= set(KINDS)


def test_classify_uses_record_kind_then_the_table_and_defaults_to_opaque():
    assert classify("aten::relu_", "kernel") == "elementwise"
    assert classify("cudnn.add_tensor", "kernel") == "broadcast"
    assert classify("cudnn.convolution_forward", "kernel") == "complex"
    assert classify("aten::sum", "kernel") == "reduction"
    assert classify("cudnn.dropout_forward", "kernel") == "opaque"
    assert classify("my.custom_kernel", "kernel") == "opaque"
    assert classify("numpy.add", "host") == "host"
    assert classify("memcpy.HtoD", "memcpy") == "copy"
    assert classify("memset", "memset") == "fill"
    assert classify("event-3", "event_record") == "sync"
    assert FUSABLE == {"elementwise", "broadcast", "injective"}
