"""The ``streamq`` command: fusion and trace subcommands, exit codes, and ``python -m streamq``."""

import json
import subprocess
import sys

import pytest
from logbuilder import LogBuilder, view

from streamq.__main__ import main, parse_bytes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def log(tmp_path):
    b = LogBuilder()
    q = b.queue("stream0")
    for _ in range(2):
        b.op(q, "aten::mul", reads=[view(1, (256,))], writes=[view(2, (256,))])
        b.op(q, "aten::relu", reads=[view(2, (256,))], writes=[view(3, (256,))])
        b.op(q, "aten::sum", reads=[view(3, (256,))], writes=[view(4, (1,))])
    path = b.write(tmp_path / "log.jsonl")
    with open(path, "a") as f:
        f.write("{oops\n")
    return path


def test_fusion_text_report(log, capsys):
    assert main(["fusion", str(log)]) == 0
    out, err = capsys.readouterr()
    assert "#1 vertical" in out and "aten::mul -> aten::relu  x2" in out
    assert "opaque_op" in out and "Races (0 found" in out
    assert f"{log}:9: invalid JSON" in out        # damaged line named in the report
    assert "1 damaged lines skipped" in err


def test_fusion_json_and_plan(log, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert main(["fusion", str(log), "--format", "json", "--plan", str(plan), "--min-savings", "1K"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    (f,) = doc["findings"]
    assert f["ops"] == ["aten::mul", "aten::relu"] and f["saved_bytes"] == 2 * 2 * 1024
    assert f["examples"] == [[3, 4], [6, 7]] and f["launches_saved"] == 2
    assert doc["diagnostics"]["damaged_lines"] == 1
    assert f"{log}:9" in err
    chains = json.loads(plan.read_text())["chains"]
    assert [c["ops"] for c in chains] == [["aten::mul", "aten::relu"]]
    assert set(chains[0]) == {"ops", "kind", "queue_label", "occurrences", "saved_bytes", "saved_us"}
    assert main(["fusion", str(log), "--format", "json", "--min-savings", "1M"]) == 0
    assert json.loads(capsys.readouterr()[0])["findings"] == []


def test_trace_subcommand(log, tmp_path, capsys):
    out_json = tmp_path / "t.json"
    assert main(["trace", str(log), "--chrome", str(out_json), "--summary"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out_json.read_text())["traceEvents"]
    assert "aten::mul" in out and "CMG" in out
    assert "wrote" in err and ":9: invalid JSON" in err
    assert main(["trace", str(log), "--summary", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr()[0])["ops"]["aten::relu"]["count"] == 2


def test_errors_and_exit_codes(tmp_path, capsys):
    assert main(["fusion", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such log" in capsys.readouterr()[1]
    assert main(["trace", str(tmp_path / "missing.jsonl")]) == 2   # nothing asked for
    with pytest.raises(SystemExit) as exc:
        main(["fusion", "x", "--min-savings", "lots"])
    assert exc.value.code == 2
    assert "not a byte count" in capsys.readouterr()[1]
    with pytest.raises(SystemExit):
        main(["fusion", "x", "--top", "0"])
    assert parse_bytes("4096") == 4096 and parse_bytes("64K") == 65536 and parse_bytes("2MiB") == 2 << 20


def test_python_dash_m_streamq(log):
    res = subprocess.run([sys.executable, "-m", "streamq", "fusion", str(log), "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["findings"][0]["kind"] == "vertical"
    res = subprocess.run([sys.executable, "-m", "streamq", "topology"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "CMG" in res.stdout
