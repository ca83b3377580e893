"""Serial and concurrent queues: ordering, sync, barriers, apply, after, suspension."""

import asyncio
import concurrent.futures as cf
import threading
import time

import pytest

import streamq
from streamq import DeadlockError, Queue

pytestmark = pytest.mark.timeout(60)


def test_serial_queue_runs_in_submission_order_one_at_a_time():
    q = Queue("serial")
    seen, active, overlap = [], [0], []

    def work(i):
        active[0] += 1
        overlap.append(active[0])
        time.sleep(0.0005 if i % 7 == 0 else 0)
        seen.append(i)
        active[0] -= 1
        return i * i

    tasks = [q.submit(work, i) for i in range(300)]
    assert [t.result(timeout=10) for t in tasks] == [i * i for i in range(300)]
    assert seen == list(range(300))
    assert max(overlap) == 1


def test_task_is_a_future_and_works_with_futures_helpers():
    q = Queue()
    tasks = [q.submit(lambda i=i: i) for i in range(20)]
    assert all(isinstance(t, cf.Future) for t in tasks)
    done, not_done = cf.wait(tasks, timeout=10)
    assert len(done) == 20 and not not_done
    assert sorted(t.result() for t in cf.as_completed(tasks, timeout=10)) == list(range(20))


def test_wait_on_pending_tasks_through_concurrent_futures_wait():
    q = Queue()
    gate = threading.Event()
    blocker = q.submit(gate.wait)
    later = q.submit(lambda: "x")
    threading.Timer(0.05, gate.set).start()
    done, _ = cf.wait([blocker, later], timeout=10, return_when=cf.ALL_COMPLETED)
    assert done == {blocker, later} and later.result() == "x"


def test_executor_protocol_map_with_and_asyncio():
    with Queue("exec", concurrent=True) as q:
        assert list(q.map(lambda x: x * 2, range(10))) == [x * 2 for x in range(10)]

        async def main():
            loop = asyncio.get_running_loop()
            return await asyncio.gather(*(loop.run_in_executor(q, pow, i, 2) for i in range(8)))

        assert asyncio.run(main()) == [i * i for i in range(8)]
    with pytest.raises(RuntimeError, match="after shutdown"):
        q.submit(print)


def test_concurrent_queue_runs_tasks_in_parallel():
    q = Queue(concurrent=True)
    barrier = threading.Barrier(2, timeout=10)  # only passes if two tasks run at once
    tasks = [q.submit(barrier.wait) for _ in range(2)]
    for t in tasks:
        t.result(timeout=10)


def test_concurrent_queue_starts_tasks_in_order():
    q = Queue(concurrent=True)
    q.suspend()
    starts = []
    lock = threading.Lock()

    def rec(i):
        with lock:
            starts.append(i)

    tasks = [q.submit(rec, i) for i in range(200)]
    q.resume()
    cf.wait(tasks, timeout=10)
    # With two workers, start order can only differ by in-flight overlap of one position.
    for pos, i in enumerate(starts):
        assert abs(pos - i) <= 1


def test_sync_on_idle_serial_queue_runs_on_calling_thread():
    q = Queue()
    assert q.sync(threading.get_ident) == threading.get_ident()
    assert q.sync(lambda a, b=0: a + b, 1, b=2) == 3


def test_sync_waits_behind_queued_work_and_keeps_order():
    q = Queue()
    order = []
    q.submit(lambda: (time.sleep(0.02), order.append("async")))
    q.sync(lambda: order.append("sync"))
    assert order == ["async", "sync"]


def test_sync_raises_the_functions_exception():
    q = Queue()
    with pytest.raises(ZeroDivisionError):
        q.sync(lambda: 1 / 0)
    assert q.sync(lambda: "still usable") == "still usable"


def test_sync_on_own_serial_queue_raises_instead_of_deadlocking():
    q = Queue("me")
    t = q.submit(lambda: q.sync(lambda: None))
    with pytest.raises(DeadlockError, match="me"):
        t.result(timeout=10)
    # Also inline sync nested in inline sync.
    with pytest.raises(DeadlockError):
        q.sync(lambda: q.sync(lambda: None))


def test_sync_onto_a_queue_targeting_the_running_serial_queue_raises():
    parent = Queue("parent")
    child = Queue("child", target=parent)
    with pytest.raises(DeadlockError):
        parent.submit(lambda: child.sync(lambda: None)).result(timeout=10)


def test_sync_from_inside_a_concurrent_queue_is_fine():
    q = Queue(concurrent=True)
    assert q.submit(lambda: q.sync(lambda: 5)).result(timeout=10) == 5
    with pytest.raises(DeadlockError):
        q.submit(lambda: q.barrier_sync(lambda: 5)).result(timeout=10)


def test_barrier_waits_for_earlier_tasks_and_runs_alone():
    q = Queue(concurrent=True)
    lock = threading.Lock()
    state = {"running": 0, "max_during_barrier": 0, "done_before": 0}

    def work():
        with lock:
            state["running"] += 1
        time.sleep(0.005)
        with lock:
            state["running"] -= 1
            state["done_before"] += 1

    def barrier():
        with lock:
            state["max_during_barrier"] = state["running"]
            return state["done_before"]

    for _ in range(10):
        q.submit(work)
    b = q.barrier(barrier)
    after = [q.submit(lambda: b.done()) for _ in range(10)]
    assert b.result(timeout=10) == 10
    assert state["max_during_barrier"] == 0
    assert all(t.result(timeout=10) for t in after)


def test_barrier_sync_returns_value():
    q = Queue(concurrent=True)
    q.submit(time.sleep, 0.01)
    assert q.barrier_sync(lambda: "b") == "b"


def test_apply_runs_every_index_once_and_in_parallel_on_concurrent_queue():
    q = Queue(concurrent=True)
    counts = [0] * 1000
    threads = set()

    def body(i):
        counts[i] += 1
        threads.add(threading.get_ident())
        time.sleep(0.0001)

    q.apply(1000, body)
    assert counts == [1] * 1000
    if streamq.topology()[0].ncores > 1 or len(streamq.topology()) > 1:
        assert len(threads) >= 2


def test_apply_on_serial_queue_is_in_order():
    q = Queue()
    seen = []
    q.apply(50, seen.append)
    assert seen == list(range(50))


def test_apply_raises_first_exception_after_all_stopped():
    q = Queue(concurrent=True)
    running = [0]
    lock = threading.Lock()
    max_after = []

    def body(i):
        with lock:
            running[0] += 1
        try:
            time.sleep(0.002)
            if i == 3:
                raise KeyError(i)
        finally:
            with lock:
                running[0] -= 1

    with pytest.raises(KeyError):
        q.apply(200, body)
    max_after.append(running[0])
    assert max_after == [0]


def test_nested_apply_with_every_worker_busy_does_not_deadlock():
    q = streamq.global_queue()
    total = []
    lock = threading.Lock()

    def outer(i):
        q.apply(8, lambda j: (lock.acquire(), total.append((i, j)), lock.release()))

    # Occupy every worker with tasks that themselves call apply.
    tasks = [q.submit(q.apply, 4, outer) for _ in range(8)]
    for t in tasks:
        t.result(timeout=30)
    assert len(total) == 8 * 4 * 8


def test_blocking_waits_inside_workers_do_not_starve_the_pool():
    # More tasks waiting on later work than there are cores: the pool must add workers.
    q = Queue(concurrent=True)
    gate = streamq.Semaphore(0)
    ncores = sum(c.ncores for c in streamq.topology())
    waiters = [q.submit(gate.wait, 10) for _ in range(ncores + 2)]
    signaller = streamq.Queue().submit(lambda: [gate.signal() for _ in range(ncores + 2)])
    signaller.result(timeout=10)
    assert all(w.result(timeout=10) for w in waiters)


def test_after_delays_and_lets_earlier_submissions_run_first():
    q = Queue()
    order = []
    t0 = time.monotonic()
    late = q.after(0.1, lambda: (order.append("after"), time.monotonic())[1])
    q.submit(order.append, "now")
    fired_at = late.result(timeout=10)
    assert fired_at - t0 >= 0.095
    assert order == ["now", "after"]


def test_after_can_be_cancelled_before_its_deadline():
    q = Queue()
    ran = []
    t = q.after(0.2, ran.append, 1)
    assert t.cancel()
    time.sleep(0.3)
    assert ran == [] and t.cancelled()
    with pytest.raises(cf.CancelledError):
        t.result()


def test_after_rejects_bad_delays():
    q = Queue()
    with pytest.raises(ValueError, match="delay_s"):
        q.after(-1, print)
    with pytest.raises(TypeError, match="delay_s"):
        q.after("soon", print)


def test_suspend_is_counted_and_stops_new_tasks():
    q = Queue()
    ran = []
    q.suspend()
    q.suspend()
    t = q.submit(ran.append, 1)
    q.resume()
    time.sleep(0.05)
    assert ran == [] and not t.done()
    q.resume()
    t.result(timeout=10)
    assert ran == [1]
    with pytest.raises(ValueError, match="without a matching suspend"):
        q.resume()


def test_suspend_does_not_interrupt_the_running_task():
    q = Queue()
    started = threading.Event()
    release = threading.Event()
    first = q.submit(lambda: (started.set(), release.wait(10)))
    second = q.submit(lambda: "second")
    started.wait(10)
    q.suspend()
    release.set()
    first.result(timeout=10)
    time.sleep(0.05)
    assert not second.done()
    q.resume()
    assert second.result(timeout=10) == "second"


def test_synchronize_waits_for_all_submitted_work():
    for concurrent in (False, True):
        q = Queue(concurrent=concurrent)
        done = []
        for i in range(50):
            q.submit(lambda i=i: (time.sleep(0.0002), done.append(i)))
        assert q.synchronize(timeout=10)
        assert len(done) == 50
        assert q.query()


def test_synchronize_runs_pending_work_on_the_waiting_thread_as_the_queues_cmg():
    # Like dispatch_sync, a waiting host thread may run the serial queue's pending items itself;
    # they must still see the queue's CMG and keep their order.
    cmg = streamq.topology()[0]
    q = Queue("help", cmg=0)
    seen = []
    gate = threading.Event()
    q.submit(gate.wait, 10)                      # a worker holds the queue ...
    for i in range(20):
        q.submit(lambda i=i: seen.append((i, streamq.current_cmg(), streamq.current_queue())))
    gate.set()                                   # ... then lets go while we wait
    assert q.synchronize()
    assert [i for i, _, _ in seen] == list(range(20))
    assert all(c == cmg and cq is q for _, c, cq in seen)
    before = threading.get_ident()
    for _ in range(50):                          # idle queue: the waiting thread usually runs it
        q.submit(lambda: seen.append(threading.get_ident()))
        q.synchronize()
    assert streamq.current_cmg() is None and streamq.current_queue() is None  # nothing leaked
    assert threading.get_ident() == before


def test_many_threads_synchronizing_one_serial_queue_keep_order_and_exclusion():
    q = Queue("shared")
    running = []
    order = []
    overlaps = []
    lock = threading.Lock()

    def item(tag):
        with lock:
            running.append(tag)
            if len(running) != 1:
                overlaps.append(list(running))
        order.append(tag)
        with lock:
            running.remove(tag)

    def host(t):
        for i in range(200):
            q.submit(item, (t, i))
            if i % 7 == 0:
                q.synchronize()
        q.synchronize()

    threads = [threading.Thread(target=host, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert q.synchronize()
    assert overlaps == []
    assert len(order) == 800
    for t in range(4):                           # each submitter's items ran in its order
        mine = [i for tt, i in order if tt == t]
        assert mine == list(range(200))


def test_synchronize_still_waits_for_earlier_work_when_the_last_item_is_cancelled():
    # The serial fast path waits for the last item submitted; if that one is cancelled before
    # it starts, the item before it may still be running and must be waited for.
    q = Queue("cancel-last")
    gate = threading.Event()
    first = q.submit(gate.wait, 10)
    last = q.submit(lambda: None)
    assert last.cancel()
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (q.synchronize(), returned.set()))
    waiter.start()
    assert not returned.wait(0.2)                # first still blocks the queue
    gate.set()
    assert returned.wait(10)
    waiter.join(10)
    assert first.done() and first.result() is True


def test_synchronize_covers_items_submitted_before_it_from_other_threads():
    q = Queue("others")
    done = []
    barrier = threading.Barrier(3)

    def submitter(tag):
        barrier.wait()
        for i in range(100):
            q.submit(done.append, (tag, i))

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    barrier.wait()
    for th in threads:
        th.join(30)
    assert q.synchronize()                       # everything was submitted before this call
    assert len(done) == 200


def test_synchronize_times_out_on_suspended_queue():
    q = Queue()
    q.suspend()
    q.submit(print)
    assert q.synchronize(timeout=0.05) is False
    assert not q.query()
    q.resume()
    assert q.synchronize(timeout=10)


def test_cancel_pending_task_and_shutdown_cancel_futures():
    q = Queue()
    gate = threading.Event()
    q.submit(gate.wait, 10)
    pending = [q.submit(lambda: None) for _ in range(5)]
    assert pending[0].cancel() and pending[0].cancelled()
    q.shutdown(wait=False, cancel_futures=True)
    gate.set()
    for t in pending:
        with pytest.raises(cf.CancelledError):
            t.result(timeout=10)
    with pytest.raises(RuntimeError):
        q.submit(print)


def test_shutdown_wait_finishes_queued_and_delayed_work():
    q = Queue()
    done = []
    for i in range(20):
        q.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
    q.after(0.05, done.append, "late")
    q.shutdown(wait=True)
    assert done[:20] == list(range(20)) and done[-1] == "late"


def test_shutdown_wait_of_suspended_queue_raises_clearly():
    q = Queue()
    q.suspend()
    q.submit(print)
    with pytest.raises(RuntimeError, match="suspended"):
        q.shutdown(wait=True)
    q.resume()
    q.synchronize(timeout=10)


def test_priority_orders_work_when_workers_are_contended():
    ncores = streamq.topology()[0].ncores
    low = Queue("low", cmg=0, priority=-5)
    high = Queue("high", cmg=0, priority=5)
    order = []
    lock = threading.Lock()
    block = threading.Event()
    # Fill every worker of CMG 0 with blockers, then queue low before high.
    blockers = [Queue(cmg=0).submit(block.wait, 10) for _ in range(ncores)]
    time.sleep(0.05)
    low_tasks = [low.submit(lambda: (lock.acquire(), order.append("low"), lock.release())) for _ in range(3)]
    high_tasks = [high.submit(lambda: (lock.acquire(), order.append("high"), lock.release())) for _ in range(3)]
    block.set()
    for t in blockers + low_tasks + high_tasks:
        t.result(timeout=10)
    assert order.index("high") < order.index("low")


def test_target_queue_serialises_its_children():
    target = Queue("target")
    children = [Queue(f"child{i}", concurrent=bool(i % 2), target=target) for i in range(4)]
    active = [0]
    peak = [0]
    lock = threading.Lock()

    def work():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.001)
        with lock:
            active[0] -= 1

    tasks = [c.submit(work) for c in children for _ in range(10)]
    for t in tasks:
        t.result(timeout=10)
    assert peak[0] == 1


def test_child_of_serial_target_keeps_its_own_order():
    target = Queue()
    child = Queue(target=target)
    seen = []
    tasks = [child.submit(seen.append, i) for i in range(100)]
    tasks[-1].result(timeout=10)
    assert seen == list(range(100))


def test_bad_constructor_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="cmg"):
        Queue(cmg=99)
    with pytest.raises(TypeError, match="target"):
        Queue(target="q")
    with pytest.raises(TypeError, match="priority"):
        Queue(priority=1.5)
    with pytest.raises(TypeError, match="fn must be callable"):
        Queue().submit(42)
    with pytest.raises(TypeError, match="after"):
        Queue().submit(print, after=[42])
    with pytest.raises(ValueError, match="n must be"):
        Queue().apply(-1, print)


def test_global_queues_are_shared_and_cannot_be_suspended_or_closed():
    assert streamq.global_queue() is streamq.global_queue()
    assert streamq.global_queue(0) is streamq.global_queue(0)
    assert streamq.global_queue(0).cmg == streamq.topology()[0]
    with pytest.raises(RuntimeError, match="global"):
        streamq.global_queue().suspend()
    streamq.global_queue().shutdown(wait=True)
    assert streamq.global_queue().submit(lambda: 1).result(timeout=10) == 1


def test_current_queue_and_current_cmg_inside_and_outside_tasks():
    q = Queue("here", cmg=0)
    assert streamq.current_queue() is None and streamq.current_cmg() is None
    assert q.submit(streamq.current_queue).result(timeout=10) is q
    assert q.submit(streamq.current_cmg).result(timeout=10) == streamq.topology()[0]
