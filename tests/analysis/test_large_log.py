"""A million-record log streams through the analyzer in bounded memory; damage in it is reported."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS_PER_ITERATION = 10

_VIEW = '{"buffer":%d,"offset":0,"dtype":"<f4","shape":[1024],"strides":[4],"bytes":4096}'
_TASK = ('{"type":"task","id":%d,"queue":%d,"label":"s%d","cmg":0,"thread":%d,"name":"%s",'
         '"kind":"%s","submit_us":%.3f,"start_us":%.3f,"end_us":%.3f,"deps":[%s],"reads":[%s],'
         '"writes":[%s],"status":"ok"}\n')
X, Y, OUT, Z, SMALL = 0x10000, 0x20000, 0x30000, 0x40000, 0x50000


def write_log(path, iterations: int) -> None:
    """A two-stream training-loop-like log: alloc, 3 kernels, free, event record/wait, a kernel
    on the second stream, a user range and a stream sync per iteration (10 records)."""
    with open(path, "w") as f:
        f.write('{"type":"meta","version":1,"pid":1,"clock":"perf_counter","t0_unix_us":0,'
                '"topology":[{"cmg":0,"cpus":[0,1],"numa_node":0}]}\n')
        for q in (1, 2):
            f.write('{"type":"queue","queue":%d,"label":"s%d","concurrent":false,"cmg":0,'
                    '"priority":0,"target":null}\n' % (q, q))
        t, tid = 0.0, 0
        for i in range(iterations):
            tmp = 0x100000 + (i % 8) * 0x10000
            lines = ['{"type":"alloc","buffer":%d,"bytes":4096,"device":0,"memory":"device","t_us":%.3f,'
                     '"thread":1}\n' % (tmp, t)]
            for name, reads, writes in (("aten::mul", (X, Y), (tmp,)), ("aten::relu", (tmp,), (OUT,)),
                                        ("aten::sum", (OUT,), (SMALL,))):
                tid += 1
                lines.append(_TASK % (tid, 1, 1, 11, name, "kernel", t, t + 1, t + 3, "",
                                      ",".join(_VIEW % r for r in reads), ",".join(_VIEW % w for w in writes)))
                t += 4
            lines.append('{"type":"free","buffer":%d,"t_us":%.3f,"thread":1}\n' % (tmp, t))
            tid += 1
            marker = tid
            lines.append(_TASK % (tid, 1, 1, 11, "ev", "event_record", t, t + 0.5, t + 0.5, "", "", ""))
            tid += 1
            lines.append(_TASK % (tid, 2, 2, 12, "ev", "event_wait", t, t + 0.5, t + 1, str(marker), "", ""))
            tid += 1
            t += 1
            lines.append(_TASK % (tid, 2, 2, 12, "aten::add", "kernel", t, t + 1, t + 3, "",
                                  _VIEW % OUT, _VIEW % Z))
            t += 4
            lines.append('{"type":"range","name":"step","thread":1,"start_us":%.3f,"end_us":%.3f}\n'
                         % (t - 20, t))
            lines.append('{"type":"host_sync","what":"cudaStreamSynchronize","queue":2,"event":null,'
                         '"start_us":%.3f,"end_us":%.3f,"thread":1}\n' % (t, t + 1))
            t += 2
            f.write("".join(lines))
            if i == iterations // 2:
                f.write('{"type":"task","queue":1,"start_us":\n')    # damaged
        f.write('{"type":"task","queue":1,"st')                       # truncated last line


ANALYSE = r"""
import json, resource, sys
from streamq.analysis import analyzer
peaks = []                      # peak RSS after every 100k records read
read = analyzer.read_records
def counting(path, diagnostics):
    for i, item in enumerate(read(path, diagnostics), 1):
        if i % 100_000 == 0:
            peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        yield item
analyzer.read_records = counting
a = analyzer.analyze(sys.argv[1])
print(json.dumps({"peaks_kib": peaks, "records": a.counts["records"], "damaged": a.diagnostics.count,
                  "lines": [m[0] for m in a.diagnostics.messages],
                  "findings": [[list(f.ops), f.occurrences, f.saved_bytes] for f in a.findings],
                  "races": len(a.races), "near": [[n["reasons"], n["count"]] for n in a.near_misses]}))
"""


def test_million_record_log_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    write_log(path, 100_000)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("STREAMQ_LOG", None)
    res = subprocess.run([sys.executable, "-c", ANALYSE, str(path)], capture_output=True, text=True,
                         env=env, timeout=280)
    assert res.returncode == 0, res.stderr
    b = json.loads(res.stdout)
    assert b["records"] == 100_000 * RECORDS_PER_ITERATION + 3
    assert b["damaged"] == 2
    assert b["lines"] == [3 + 50_001 * RECORDS_PER_ITERATION + 1, 100_000 * RECORDS_PER_ITERATION + 5]
    assert b["findings"] == [[["aten::mul", "aten::relu"], 100_000, 100_000 * 2 * 4096]]
    assert b["races"] == 0
    assert b["near"] == [[["opaque_op"], 100_000]]       # relu -> sum: a reduction
    # the peak memory after 100k records is (nearly) the peak after a million: nothing grows
    peaks = b["peaks_kib"]
    assert len(peaks) == 10
    growth_mib = (peaks[-1] - peaks[0]) / 1024
    assert growth_mib < 16, peaks
    assert os.path.getsize(path) > 200 << 20   # parsed whole, the log would take gigabytes
