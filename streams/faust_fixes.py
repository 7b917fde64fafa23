"""Workarounds for faust-streaming's delivery bugs, in one module (docs/architecture.md).

faust-streaming (0.15, #596) drops records fetched while flow is suspended during a rebalance or
table recovery, yet advances its read offset past them, and can leave an assigned partition out
of its fetch set after a rebalance during recovery. :class:`DeliveryGuard` keeps the worker's
own next offset per partition, reads what the stream skipped straight from the broker
(:class:`SkippedRecords`), and puts a stalled partition back in the fetch set, a changelog
partition table recovery waits for in vain too (:func:`recovery_stalls`). When Faust is
fixed, this module is what goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams.kafkaio import group_offsets, kafka_client_kwargs
from streams.settings import Settings

log = logging.getLogger("gridwatch")

# handle(topic, partition, offset, key, value): process one record read back from the broker
Handle = Callable[[str, int, int, bytes | None, bytes | None], Awaitable[None]]


class SkippedRecords:
    """A group-less consumer that reads offset ranges the Faust stream skipped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def read(
        self, topic: str, partition: int, start: int, end: int, *, patience_s: float = 60.0
    ) -> list[Any]:
        """Records with start <= offset < end; fewer only if the log has a gap (retention) or
        the broker gave nothing for ``patience_s`` (down longer than that)."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, **kafka_client_kwargs(self.settings)
            )
            await self._consumer.start()
        tp = TopicPartition(topic, partition)
        self._consumer.assign([tp])
        self._consumer.seek(tp, start)
        out: list[Any] = []
        empty_polls = 0
        while empty_polls < max(1, int(patience_s)):
            batch = await self._consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            records = batch.get(tp, [])
            empty_polls = 0 if records else empty_polls + 1
            out.extend(r for r in records if start <= r.offset < end)
            if records and records[-1].offset >= end - 1:
                break
        return out


class DeliveryGuard:
    """The next offset to process per (topic, partition), and the repairs when Faust's stream
    delivers something else."""

    def __init__(self, app: faust.App, settings: Settings, *, on_gap: Any, on_stall: Any) -> None:
        self.app = app
        self.settings = settings
        self.on_gap = on_gap  # called once per skipped range read back
        self.on_stall = on_stall  # called once per stalled partition resumed
        self._next: dict[tuple[str, int], int] = {}
        self._skipped = SkippedRecords(settings)
        self._start_committed: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset
        self._recovery_tries: dict[Any, float] = {}  # changelog partition -> last resumed (monotonic)

    def next_offset(self, topic: str, partition: int) -> int | None:
        return self._next.get((topic, partition))

    def done_already(self, topic: str, partition: int, offset: int) -> bool:
        """Read again after a stalled partition was resumed: processed before."""
        return offset < self._next.get((topic, partition), -1)

    def skipped_before(self, topic: str, partition: int, offset: int) -> bool:
        """Records before ``offset`` may have been skipped (the records before them in a
        group must be applied first)."""
        expected = self._next.get((topic, partition))
        return expected is None or offset > expected

    def forget(self, tps: Iterable[Any]) -> None:
        """Partitions revoked: their next offsets come from the group's commits again."""
        for tp in tps:
            self._next.pop((tp.topic, tp.partition), None)

    async def fill(self, topic: str, partition: int, offset: int, handle: Handle) -> bool:
        """Process, in order, records the stream skipped before ``offset``; False when the
        record at ``offset`` is not to be processed (it is in state already).

        Offsets of our topics are contiguous, so a jump here means records were skipped: read
        them straight from the broker and process them before this one, keeping event-time
        order; then tell Faust the range is done so commits go on.
        """
        tp_key = (topic, partition)
        expected = self._next.get(tp_key)
        if expected is None:
            committed = getattr(self.app.consumer, "_committed_offset", {}).get(TP(topic, partition))
            expected = committed if committed is not None else offset
            if offset < expected:
                return False  # buffered before a rebalance gave the partition back: in state
        if offset > expected:
            records = await self._skipped.read(topic, partition, expected, offset)
            log.warning(
                "%s[%d]: offsets %d..%d were skipped by the stream; processed %d of them from the broker",
                topic,
                partition,
                expected,
                offset - 1,
                len(records),
            )
            if len(records) < offset - expected:
                # Not silent: only a retention gap or a broker gone for a minute gets here.
                log.error(
                    "%s[%d]: %d record(s) of offsets %d..%d could not be read back and are not "
                    "in the results",
                    topic,
                    partition,
                    offset - expected - len(records),
                    expected,
                    offset - 1,
                )
            self.on_gap()
            for rec in records:
                await handle(topic, partition, rec.offset, rec.key, rec.value)
            await self.app.consumer._add_gap(TP(topic, partition), expected, offset - 1)
        self._next[tp_key] = max(offset + 1, self._next.get(tp_key, 0))
        return True

    async def committed_at_start(self, tps: list[Any]) -> dict[tuple[str, int], int]:
        """The group's committed offsets of partitions this process has not read from yet
        (Faust knows a partition's committed offset only after committing it itself)."""
        missing = [tp for tp in tps if (tp.topic, tp.partition) not in self._start_committed]
        if missing:
            offsets = await asyncio.to_thread(group_offsets, self.settings)
            if offsets is None:
                return self._start_committed  # asked again next tick
            for tp in missing:
                # No committed offset: the group starts it from the beginning. Remembered too,
                # or every tick would open an admin client again (0.5-2 s timer runs seen).
                self._start_committed[(tp.topic, tp.partition)] = offsets.get((tp.topic, tp.partition), 0)
        return self._start_committed

    async def resume_recovery(self, now: float) -> None:
        """Read again the changelog partitions table recovery waits for in vain
        (:func:`recovery_stalls`): resumed in the fetch set and sought back to recovery's own
        offset. Records read twice set the same table values again."""
        recovery = self.app.tables.recovery
        for tp, offset in recovery_stalls(recovery, now, self._recovery_tries).items():
            log.warning(
                "table recovery: %s[%d] delivered nothing for %.0f s with records left (read to %d of %d); "
                "resuming it and reading again from %d",
                tp.topic,
                tp.partition,
                RECOVERY_STALL_S,
                recovery.active_offsets.get(tp, -1),
                recovery.active_highwaters.get(tp, -1),
                offset,
            )
            self._recovery_tries[tp] = now
            await self._fetch_again(tp, offset)

    async def resume_stalled(self, tp: Any, position: int, highwater: int) -> None:
        """Put a stalled partition back in the fetch set and read it again from the next
        offset to process.

        faust-streaming can leave an assigned partition out of its active set after a
        rebalance during recovery (and drops what it fetched for it meanwhile); its records
        are then never delivered and its windows never close. Re-reading from our own
        position repeats nothing: records processed already are skipped (:meth:`done_already`).
        """
        consumer = self.app.consumer
        log.warning(
            "%s[%d]: no record delivered for a while with %d waiting (next %d, end %d; "
            "active=%s paused=%s); resuming it and reading again from %d",
            tp.topic,
            tp.partition,
            highwater - position,
            position,
            highwater,
            tp in (getattr(consumer, "_active_partitions", None) or ()),
            tp in (getattr(consumer, "_paused_partitions", None) or ()),
            position,
        )
        await self._fetch_again(tp, position)

    async def _fetch_again(self, tp: Any, offset: int) -> None:
        """Put ``tp`` back in Faust's fetch set and read it from ``offset``; counted."""
        self.on_stall()
        consumer = self.app.consumer
        getattr(consumer, "_buffered_partitions", set()).discard(tp)
        consumer.resume_partitions([tp])
        await consumer.seek(tp, offset)


# A changelog partition table recovery waits for but that delivered nothing for this long is
# read again: recovery of a partition with records flows in well under a second here.
RECOVERY_STALL_S = 30.0


def recovery_stalls(
    recovery: Any, now: float, tried: dict[Any, float], stall_s: float = RECOVERY_STALL_S
) -> dict[Any, int]:
    """Changelog partitions Faust's table recovery still needs records of (read up to an
    offset below the partition's last) that delivered none for ``stall_s`` since recovery
    started, their last record, or the last try (``tried``: partition -> time); each with the
    offset to read again from, Faust's own (its seek re-reads the last record read).

    faust-streaming can drop records it fetched during a rebalance and move its read offset past
    them (the bug behind :class:`DeliveryGuard`); in table recovery that leaves a worker waiting
    for them for ever (seen once in CI: the rebalance test's worker, after the other left, read
    nothing of the two changelog partitions it took over for minutes, warning "No event
    received for active tp ... since recovery start").

    >>> from types import SimpleNamespace as NS
    >>> r = NS(in_recovery=True, _recovery_started_at=0.0, _active_events_received_at={"b": 25.0},
    ...        active_highwaters={"a": 9, "b": 9, "c": 4}, active_offsets={"a": -1, "b": 3, "c": 4})
    >>> recovery_stalls(r, 40.0, {}), recovery_stalls(r, 60.0, {}), recovery_stalls(r, 60.0, {"a": 45.0})
    ({'a': 0}, {'a': 0, 'b': 3}, {'b': 3})
    >>> recovery_stalls(NS(in_recovery=False), 60.0, {})
    {}
    """
    started = getattr(recovery, "_recovery_started_at", None)
    if not recovery.in_recovery or started is None:
        return {}
    received = getattr(recovery, "_active_events_received_at", {})
    out = {}
    for tp, last in recovery.active_highwaters.items():
        have = recovery.active_offsets.get(tp, -1)
        if have >= last:
            continue
        if now - max(received.get(tp, started), tried.get(tp, started), started) >= stall_s:
            out[tp] = max(have, 0)
    return out


def stalled(last_event: float, recovered_since: float | None, now: float, idle_close_s: float) -> bool:
    """Records wait on the broker, recovery is over, yet the stream has delivered nothing of
    a partition for a long while (``stall_s`` past both its last record and the end of
    recovery).

    >>> stalled(0.0, None, 100.0, 3.0), stalled(0.0, 50.0, 55.0, 3.0), stalled(0.0, 50.0, 60.0, 3.0)
    (False, False, True)
    """
    if recovered_since is None:
        return False
    stall_s = max(10.0, 3 * idle_close_s)
    return now - max(last_event, recovered_since) >= stall_s
