"""LoopBridge: a pynetdicom thread runs a coroutine on the gateway's asyncio loop and waits for it
on a socket of its own (gateway.dimse.bridge). Real loop in a real thread, as in the gateway."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.dimse.bridge import LoopBridge


@pytest.fixture
def bridge():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield LoopBridge(loop, timeout=5.0)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def answer(value, delay: float = 0.0):
    await asyncio.sleep(delay)
    return value


async def fail():
    raise ValueError("refused by the core")


def test_results_and_exceptions_come_back(bridge):
    assert [bridge.run(answer(n)) for n in range(200)] == list(range(200))
    with pytest.raises(ValueError, match="refused by the core"):
        bridge.run(fail())


def test_a_late_answer_is_a_timeout_and_the_next_call_is_not_confused(bridge):
    with pytest.raises(TimeoutError):
        bridge.run(answer("late", delay=1.0), timeout=0.05)
    # The late call's wake-up may still arrive: the next call must wait for its own answer.
    assert bridge.run(answer("own", delay=0.2)) == "own"
    assert bridge.run(answer("next")) == "next"


def test_many_threads_each_get_their_own_answers(bridge):
    results: dict[int, list] = {}

    def worker(k: int) -> None:
        results[k] = [bridge.run(answer((k, n))) for n in range(100)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {k: [(k, n) for n in range(100)] for k in range(8)}
