"""The backlog that writes requests' metrics and log lines in batches, after their replies."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from encoderfile.runtime.serve.backlog import Backlog
from encoderfile.runtime.serve.logs import info_at


def test_queued_calls_wait_for_one_timer_then_run_in_order() -> None:
    ran: list[int] = []

    async def main() -> None:
        backlog = Backlog(delay=0.05)
        for i in range(3):
            backlog.add(ran.append, i)
        await asyncio.sleep(0)
        assert ran == []  # not in the loop's next step: after the delay
        await asyncio.sleep(0.3)
        assert ran == [0, 1, 2]
        backlog.add(ran.append, 3)  # the timer fired: the next call sets a new one
        await asyncio.sleep(0.3)

    asyncio.run(main())
    assert ran == [0, 1, 2, 3]


def test_flush_runs_each_call_once_whichever_threads_flush() -> None:
    ran: list[int] = []
    backlog = Backlog(delay=60)

    async def queue() -> None:
        for i in range(500):
            backlog.add(ran.append, i)

    asyncio.run(queue())
    flushers = [threading.Thread(target=backlog.flush) for _ in range(4)]
    for thread in flushers:
        thread.start()
    for thread in flushers:
        thread.join()
    assert sorted(ran) == list(range(500))


def test_a_timer_lost_with_its_closed_loop_does_not_hold_back_later_calls() -> None:
    ran: list[int] = []
    backlog = Backlog(delay=0.05)

    async def add(i: int, wait: float) -> None:
        backlog.add(ran.append, i)
        await asyncio.sleep(wait)

    asyncio.run(add(0, 0))  # the loop closes before its timer fires
    assert ran == []
    asyncio.run(add(1, 0.3))
    assert ran == [0, 1]


def test_a_request_line_is_dated_when_the_request_finished(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("encoderfile.serve")
    finished = 1_700_000_000.25
    with caplog.at_level(logging.INFO, logger="encoderfile.serve"):
        info_at(logger, finished, "GRPC %s inputs=%d", "Embed", 2, extra={"route": "Embed"})
    (record,) = [r for r in caplog.records if r.name == "encoderfile.serve"]
    assert record.getMessage() == "GRPC Embed inputs=2" and record.route == "Embed"  # type: ignore[attr-defined]
    assert record.created == finished and record.msecs == 250
    assert logging.Formatter("%(asctime)s").format(record).endswith(",250")


def test_a_request_line_below_the_level_is_not_made(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="encoderfile.serve"):
        info_at(logging.getLogger("encoderfile.serve"), 1.0, "quiet", extra={})
    assert not [r for r in caplog.records if r.name == "encoderfile.serve"]
