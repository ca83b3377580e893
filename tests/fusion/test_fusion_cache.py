"""Generated kernels are module files: a second process reuses them without compiling."""

import json
import os

import pytest

pytestmark = pytest.mark.timeout(180)

RUN_CHAIN = """
import json, os, numpy as np
from streamq.fusion import codegen
from streamq.fusion.chain import FusedCall
from streamq.fusion.layout import plan_layout
from streamq.fusion.ops import parse

x = np.linspace(-3, 3, 1000).astype(np.float32)
w = np.float32(1.5)
t, y = np.empty_like(x), np.empty_like(x)
call = FusedCall([parse("aten::mul", (x, w), {"out": t}),
                  parse("aten::sub_", (t, x), {"alpha": 0.25}),
                  parse("aten::threshold", (t, 0.5, -1.0), {"out": y})])
call()
kernel = codegen.kernel(call.program, plan_layout(call.shape, call.reads + call.writes).kinds)
ref = x * w - np.float32(0.25) * x
print(json.dumps({"hits": sum(kernel.stats.cache_hits.values()),
                  "misses": sum(kernel.stats.cache_misses.values()),
                  "ok": bool(np.array_equal(y, np.where(ref <= 0.5, -1.0, ref).astype(np.float32))),
                  "file": kernel.py_func.__code__.co_filename}))
"""


def test_a_second_process_loads_the_kernel_from_the_cache(tmp_path, python_subprocess):
    env = {"STREAMQ_CACHE_DIR": str(tmp_path / "fused")}
    first = python_subprocess(RUN_CHAIN, env=env, timeout=150)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert r1["ok"] and r1["misses"] >= 1 and r1["hits"] == 0
    module = r1["file"]
    assert os.path.dirname(module) == str(tmp_path / "fused")
    assert os.path.basename(module).startswith("streamq_fused_")
    cached = os.listdir(tmp_path / "fused" / "__pycache__")
    assert any(f.endswith(".nbi") for f in cached) and any(f.endswith(".nbc") for f in cached)
    stamp = os.stat(module).st_mtime_ns

    second = python_subprocess(RUN_CHAIN, env=env, timeout=150)
    assert second.returncode == 0, second.stderr
    r2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert r2["ok"] and r2["file"] == module
    assert r2["hits"] >= 1 and r2["misses"] == 0          # loaded, not compiled
    assert os.stat(module).st_mtime_ns == stamp           # the module was not rewritten


def test_one_kernel_per_program_and_layout_in_a_process(tmp_path, monkeypatch):
    import numpy as np

    from streamq.fusion import codegen
    from streamq.fusion.chain import FusedCall
    from streamq.fusion.ops import parse

    a, t = np.ones(16, np.float32), np.empty(16, np.float32)
    call = FusedCall([parse("aten::mul", (a, a), {"out": t}), parse("aten::relu_", (t,), {})])
    assert codegen.kernel(call.program, "ff") is codegen.kernel(call.program, "ff")
    assert codegen.render(call.program, "ff") != codegen.render(call.program, "fs")
    with pytest.raises(ValueError, match="kinds"):
        codegen.render(call.program, "f")
