"""The worker's job executor: each job on a thread that ends when no job waits, at most N at once."""

from __future__ import annotations

import threading
import time

import pytest

from world.server.jobs import ThreadPerJobExecutor


def _wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_jobs_run_off_the_caller_and_their_threads_end():
    pool = ThreadPerJobExecutor(max_workers=2)
    caller = threading.get_ident()
    futures = [pool.submit(lambda k: (k * k, threading.get_ident()), k) for k in range(5)]
    results = [f.result(timeout=10) for f in futures]
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    assert caller not in {r[1] for r in results}
    assert _wait_until(lambda: pool.threads == 0)  # nothing lives on once the jobs are done
    names = {t.name for t in threading.enumerate()}
    assert not any(n.startswith("worker-job") for n in names)


def test_at_most_max_workers_at_once_and_the_rest_wait_in_order():
    pool = ThreadPerJobExecutor(max_workers=2)
    gate, started, order = threading.Event(), [], []
    lock = threading.Lock()

    def job(k):
        with lock:
            started.append(k)
        gate.wait(10)
        with lock:
            order.append(k)
        return k

    futures = [pool.submit(job, k) for k in range(4)]
    assert _wait_until(lambda: len(started) == 2)
    time.sleep(0.1)
    assert sorted(started) == [0, 1] and pool.threads == 2  # 2 and 3 wait for a thread
    gate.set()
    assert [f.result(timeout=10) for f in futures] == [0, 1, 2, 3]
    assert started[2:] == [2, 3]


def test_a_failing_job_hands_its_exception_over_and_the_executor_goes_on():
    pool = ThreadPerJobExecutor(max_workers=1)

    def boom():
        raise ValueError("bad world")

    with pytest.raises(ValueError, match="bad world"):
        pool.submit(boom).result(timeout=10)
    assert pool.submit(lambda: 7).result(timeout=10) == 7


def test_shutdown_cancels_waiting_jobs_and_refuses_new_ones():
    pool = ThreadPerJobExecutor(max_workers=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    assert _wait_until(running.running)  # taken by its thread before the shutdown
    waiting = pool.submit(lambda: 1)
    pool.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: 2)
    gate.set()
    assert running.result(timeout=10) is True
    with pytest.raises(ValueError):
        ThreadPerJobExecutor(max_workers=0)
