"""Idle consumers wait on Redis instead of polling it (workers/broker.py, WakingRedisBroker):
with a long idle timeout a message sent after a quiet spell is still taken at once, a delayed
message runs when it is due, a consumer whose prefetch is full resumes as soon as a message is
done, and an idle consumer asks Redis for work a few times per timeout, not ten times a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from tests.conftest import TEST_REDIS_URL
from workers.broker import MAX_WAIT_MS, WakingRedisBroker

IDLE_TIMEOUT_MS = 2_000  # dramatiq_worker_timeout: far longer than any latency asserted here
QUEUE = "wakeup_test"


class Runs:
    """When each message ran (time.time()), by its argument."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, key: str) -> None:
        with self._lock:
            self.at[key] = time.time()

    def wait_for(self, keys: list[str], timeout: float = 10.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(key in self.at for key in keys):
                    return {key: self.at[key] for key in keys}
            time.sleep(0.002)
        raise AssertionError(f"not run within {timeout} s: {sorted(set(keys) - set(self.at))}")


@pytest.fixture
def broker(redis_client: redis.Redis) -> Iterator[WakingRedisBroker]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=5)
    broker = WakingRedisBroker(client=client, namespace="wakeup-test", middleware=[])
    yield broker
    broker.close()
    client.close()


def start_worker(broker: WakingRedisBroker, runs: Runs, threads: int = 2) -> tuple[Worker, Any]:
    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def note(key: str, work_s: float = 0.0) -> None:
        time.sleep(work_s)
        runs.record(key)

    worker = Worker(broker, worker_timeout=IDLE_TIMEOUT_MS, worker_threads=threads)
    worker.start()
    return worker, note


def test_a_message_after_a_quiet_spell_is_taken_at_once(broker: WakingRedisBroker) -> None:
    runs = Runs()
    worker, note = start_worker(broker, runs)
    try:
        for i in range(3):
            time.sleep(1.5)  # idle: every consumer is waiting
            sent = time.time()
            note.send(f"m{i}")
            ran = runs.wait_for([f"m{i}"])[f"m{i}"]
            assert ran - sent < 0.25, f"message {i} waited {ran - sent:.3f} s"
    finally:
        worker.stop(timeout=10_000)


def test_an_idle_consumer_asks_redis_a_few_times_per_timeout(
    broker: WakingRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches: list[str] = []
    fetch = broker.do_fetch

    def counting_fetch(queue_name: str, *args: Any) -> Any:
        fetches.append(queue_name)
        return fetch(queue_name, *args)

    monkeypatch.setattr(broker, "do_fetch", counting_fetch, raising=False)
    worker, _ = start_worker(broker, Runs())
    try:
        time.sleep(1.0)
        fetches.clear()
        time.sleep(3.0)
    finally:
        worker.stop(timeout=10_000)
    # Two consumers (the queue and its delay queue), each back once per idle timeout; polling
    # every 100 ms, as the pools did before, made about 60 fetches in 3 s.
    per_consumer = 3.0 / (min(IDLE_TIMEOUT_MS, MAX_WAIT_MS) / 1000) + 1
    assert len(fetches) <= 2 * per_consumer, fetches


def test_a_delayed_message_runs_when_it_is_due(broker: WakingRedisBroker) -> None:
    runs = Runs()
    worker, note = start_worker(broker, runs)
    try:
        time.sleep(1.0)
        sent = time.time()
        note.send_with_options(args=("later",), delay=700)
        time.sleep(0.3)
        note.send_with_options(args=("sooner",), delay=100)  # due first, sent last
        at = runs.wait_for(["later", "sooner"])
    finally:
        worker.stop(timeout=10_000)
    assert 0.7 <= at["later"] - sent < 0.7 + 0.25
    assert 0.4 <= at["sooner"] - sent < 0.4 + 0.25


def test_a_full_consumer_resumes_as_soon_as_a_message_is_done(broker: WakingRedisBroker) -> None:
    runs = Runs()
    worker, note = start_worker(broker, runs, threads=1)  # prefetch: 2 messages
    try:
        time.sleep(1.0)
        started = time.time()
        keys = [f"m{i}" for i in range(8)]
        for key in keys:
            note.send(key, 0.05)
        at = runs.wait_for(keys)
    finally:
        worker.stop(timeout=10_000)
    assert len(at) == 8
    # 8 x 50 ms of work one after another; waiting out the idle timeout once would take 2 s.
    assert max(at.values()) - started < 1.5
