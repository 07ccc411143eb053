"""The bulk engine's threads: sends on the event loop's thread, everything else on the caller's.

``BulkSender`` runs its requests on an asyncio loop in a thread of its own and keeps rendering,
ledger writes and progress lines on the thread that called ``run`` (in a task: the task's own,
whose channel to the supervisor is not meant for several threads). These tests send through the
simulator and record, from the callables the engine is given, which thread ran what. What is
sent is read from the simulator's request log.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from airflow_provider_wa019.api import SEND_PATH
from airflow_provider_wa019.bulk import BulkSender, MemoryLedgerStore, ProgressLedger, parse_recipients
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook
from airflow_provider_wa019.testing import WhatsAppSimulator


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    return make_sim(timeout=[0.3, 3])


def numbers(count: int) -> list[str]:
    return [f"97253{i:07d}" for i in range(count)]


def open_windows(sim: WhatsAppSimulator, nums: list[str]) -> list[str]:
    for number in nums:
        sim.open_window(number)
    return nums


class ThreadRecordingStore(MemoryLedgerStore):
    """A ledger store that notes the thread of every read and write."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[threading.Thread] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.threads.add(threading.current_thread())
        return super().get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.threads.add(threading.current_thread())
        super().set(key, value)


def test_only_the_sends_leave_the_calling_thread(sim):
    nums = open_windows(sim, numbers(30))
    recipients, _ = parse_recipients(nums)
    sim.latency = 0.01
    hook = WhatsAppAsyncHook()
    hook.message_log_level = logging.DEBUG
    _ = hook.settings  # the connection is read here, as the operator does
    prepared_on: set[threading.Thread] = set()
    sent_on: set[threading.Thread] = set()
    store = ThreadRecordingStore()

    def prepare(recipient: Any) -> str:
        prepared_on.add(threading.current_thread())
        return "Hello"

    async def send(number: str, body: str) -> Any:
        sent_on.add(threading.current_thread())
        return await hook.send_message(number, body)

    report = BulkSender(
        send,
        prepare=prepare,
        ledger=ProgressLedger(store, batch_size=5),  # several writes during the run
        max_concurrency=4,
        resend_unknown=False,  # claims are written too
        aclose=hook.close,
    ).run(recipients)

    assert report.sent_now == 30
    assert store.writes > 2
    caller = threading.current_thread()
    assert prepared_on == {caller}
    assert store.threads == {caller}  # every ledger read and write
    assert len(sent_on) == 1
    assert sent_on != {caller}  # the event loop's own thread
    assert sorted(r.json["to"] for r in sim.requests_to(SEND_PATH)) == sorted(nums)
    # The hook's session was closed on its loop when the run ended (aclose).
    assert hook._client is None


def test_a_plain_send_function_runs_in_worker_threads_with_the_same_concurrency(sim):
    nums = open_windows(sim, numbers(12))
    recipients, _ = parse_recipients(nums)
    sim.latency = 0.05  # long enough for three requests to overlap
    with WhatsAppHook() as hook:
        hook.message_log_level = logging.DEBUG
        report = BulkSender(hook.send_message, prepare=lambda r: "Hello", max_concurrency=3).run(recipients)

    assert report.sent_now == 12
    assert sim.peak_concurrency == 3
    assert sorted(r.json["to"] for r in sim.requests_to(SEND_PATH)) == sorted(nums)


def test_a_bulk_of_one_request_at_a_time_never_overlaps_and_sends_each_once(sim):
    nums = open_windows(sim, numbers(8))
    recipients, _ = parse_recipients(nums)
    sim.latency = 0.02
    hook = WhatsAppAsyncHook()
    hook.message_log_level = logging.DEBUG
    _ = hook.settings

    report = BulkSender(
        hook.send_message, prepare=lambda r: "Hello", max_concurrency=1, aclose=hook.close
    ).run(recipients)

    assert report.sent_now == 8
    assert sim.peak_concurrency == 1
    # In the recipients' order: one worker takes the handed-over messages first in, first out.
    assert [r.json["to"] for r in sim.requests_to(SEND_PATH)] == nums
