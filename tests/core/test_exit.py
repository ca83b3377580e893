"""The interpreter exits cleanly: queued work finishes, suspended work is cancelled loudly."""

import pytest

pytestmark = pytest.mark.timeout(60)


def test_queued_work_finishes_before_exit(python_subprocess, tmp_path):
    out_file = tmp_path / "done.txt"
    out = python_subprocess(f"""
        import time, streamq
        q = streamq.Queue()
        for i in range(50):
            q.submit(lambda i=i: (time.sleep(0.002), open({str(out_file)!r}, "a").write(f"{{i}}\\n")))
    """)
    assert out.returncode == 0, out.stderr
    assert out_file.read_text().split() == [str(i) for i in range(50)]


def test_suspended_queue_and_pending_timer_do_not_hang_exit(python_subprocess, tmp_path):
    marker = tmp_path / "timer.txt"
    out = python_subprocess(f"""
        import streamq
        q = streamq.Queue("stuck")
        q.suspend()
        t = q.submit(print, "never")
        streamq.Queue("timed").after(3600, lambda: open({str(marker)!r}, "w").write("ran"))
    """, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "stuck" in out.stderr and "cancelling" in out.stderr
    assert "delayed" in out.stderr
    assert marker.read_text() == "ran"
    assert "never" not in out.stdout


def test_unretrieved_failure_is_reported_at_exit(python_subprocess):
    out = python_subprocess("""
        import streamq
        streamq.Queue().submit(lambda: 1 / 0)
    """)
    assert out.returncode == 0
    assert "never retrieved" in out.stderr and "ZeroDivisionError" in out.stderr
