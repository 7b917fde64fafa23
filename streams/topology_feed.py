"""The worker's copy of the grid archive: the compacted topology topic, read in bulk into the
columns of a :class:`archive.MeterArchive` for the partitions the worker holds, then followed live.

Readings are keyed by area, so a worker needs the meters of its partitions' areas only; it
holds every version of each meter mapped to one of them at any time, so a moved meter's
readings that arrive under its other area are forwarded as before (docs/scaling.md, "The
archive per worker"). A rebalance that changes the worker's partitions builds it again.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from archive import HISTORY, SUPPLY, ArchiveBuilder, MeterArchive
from streams.contracts import InvalidRecord
from streams.kafkaio import from_beginning, kafka_client_kwargs
from streams.settings import Settings
from streams.topology_decode import ChunkDecoder, add_values
from topology import MeterRecord, Role, Topology, record_columns

log = logging.getLogger("gridwatch")

DeadLetter = Callable[[str, str, str, int, int, "bytes | None", "bytes | None"], Awaitable[None]]

_CHUNK = 10_000  # records decoded and added per step of a load (its objects are transient)


def area_partition(area_id: str, partitions: int) -> int:
    """The partition of ``area_id``'s readings: Kafka's default partitioner (murmur2 of the
    key), which the readings' producers and the worker's forwards use.

    >>> area_partition("A0001", 8), area_partition("A0001", 1)
    (6, 0)
    """
    return (murmur2(area_id.encode()) & 0x7FFFFFFF) % partitions


def release_free_memory() -> None:
    """Give the heap freed by a load back to the OS: glibc keeps it (its mmap threshold rises
    after large frees), and a load's transient columns are several times the archive."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (each lookup makes a ctypes class: objects that
    would outlive a load in its heap arenas); None where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class TopologyFeed:
    """Holds the archive of the partitions assigned to this worker, current with the topic.

    ``assign`` (from Faust's on_partitions_assigned) names the partitions; ``covers`` says
    whether the installed archive serves a partition, ``wait_for`` waits until it does.
    Records of the topic that fail the contract are dead-lettered once, on the first read.
    """

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        *,
        dead_letter: DeadLetter,
        on_install: Callable[[MeterArchive], None] = lambda archive: None,
        on_count: Callable[[int], None] = lambda n: None,
        on_apply: Callable[[MeterRecord], None] = lambda record: None,
        base: Sequence[MeterRecord] = (),
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.dead_letter = dead_letter
        self.on_install = on_install
        self.on_count = on_count
        self.on_apply = on_apply
        self.base = list(base)  # records read before the topic (a meters CSV), in that order
        self.partitions = settings.partitions  # of the readings topic, read from the broker
        self.wanted: frozenset[int] | None = None
        self.held: frozenset[int] | None = None
        self.loaded = asyncio.Event()  # the first archive is installed (or there is no topic)
        self._changed = asyncio.Event()
        self._installed = asyncio.Event()
        self._reported: dict[Any, int] = {}  # topic partition -> offsets dead-lettered below
        self.loads: list[dict[str, float]] = []  # records, seconds, meters of every load

    # ---- assignment ------------------------------------------------------------------------

    def assign(self, partitions: set[int]) -> None:
        """The readings partitions this worker now owns: the archive is built again for them.
        Partitions held already are served by the current archive meanwhile; new ones wait."""
        wanted = frozenset(partitions)
        self.wanted = wanted
        if not self.settings.archive_shard:
            # One archive of every meter serves any assignment: built once, never again.
            if self.held is None:
                self._changed.set()
            return
        if wanted != self.held:
            self._changed.set()
        if self.held is None or not wanted <= self.held:
            self._installed.clear()

    def covers(self, partition: int) -> bool:
        return self.held is not None and partition in self.held

    async def wait_for(self, partition: int) -> None:
        """Until the archive serves ``partition`` (or it is no longer assigned here)."""
        while not self.covers(partition) and (self.wanted is None or partition in self.wanted):
            await self._installed.wait()
            if not self.covers(partition):
                await asyncio.sleep(0.05)  # installed for an older assignment: the next comes

    def _keep_area(self, held: frozenset[int]) -> Callable[[str], bool] | None:
        if len(held) >= self.partitions:
            return None
        n = self.partitions
        return lambda area_id: area_partition(area_id, n) in held

    # ---- reading the topic -----------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            s.topic_topology,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_kwargs(s),
        )
        await consumer.start()
        try:
            end = await from_beginning(consumer)
            if not end:
                log.error("topology topic %s not found; no meter is known", s.topic_topology)
                self.held = frozenset(range(self.partitions))
                self._installed.set()
                self.loaded.set()
                return
            found = consumer.partitions_for_topic(s.topic_readings)
            if found:
                self.partitions = len(found)
            while True:
                await self._changed.wait()
                self._changed.clear()
                wanted = self.wanted if s.archive_shard else frozenset(range(self.partitions))
                assert wanted is not None
                await self._load(consumer, wanted)
                await self._follow(consumer)
        finally:
            await consumer.stop()

    async def _load(self, consumer: AIOKafkaConsumer, held: frozenset[int]) -> None:
        started, cpu = time.monotonic(), time.process_time()
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        keep_area = self._keep_area(held)
        n = self.partitions
        # A shard also keeps every other meter's partition (the meter directory), so that a
        # reading under an area its meter is not in reaches the worker that holds the meter.
        builder = ArchiveBuilder(keep_area, partition_of=None if keep_area is None else
                                 lambda area_id: area_partition(area_id, n))
        if self.base:
            builder.add(*record_columns(self.base))
        decoder = ChunkDecoder()
        pending: list[Any] = []
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=_CHUNK)
            for records in batch.values():
                pending.extend(records)
            done = all([await consumer.position(tp) >= end[tp] for tp in tps])
            if len(pending) >= _CHUNK or (done and pending):
                await self._add(builder, decoder, pending)
                pending = []
                await asyncio.sleep(0)  # let heartbeats and timers run between chunks
            if done:
                break
        archive = builder.build()
        self.topology.install(archive)
        self.held = held
        self.on_install(archive)
        self.on_count(self.topology.meter_count())
        took = {"records": builder.records, "seconds": time.monotonic() - started,
                "cpu_s": time.process_time() - cpu, "meters": archive.size, "bytes": archive.nbytes}
        self.loads.append(took)
        log.info(
            "topology loaded for %d of %d partitions: %d meters (%.1f MB) from %d records in %.1f s",
            len(held), self.partitions, archive.size, archive.nbytes / 1e6, builder.records, took["seconds"],
        )
        release_free_memory()
        if not self.loaded.is_set():
            # The archive and the app's long-lived objects leave the collector's generations:
            # a full collection walks every tracked object, and these live as long as the
            # process.
            gc.collect()
            gc.freeze()
        self._installed.set()
        self.loaded.set()

    async def _add(self, builder: ArchiveBuilder, decoder: ChunkDecoder, records: list[Any]) -> None:
        refused = add_values(builder, decoder, [r.value for r in records])
        for i, exc in refused:
            await self._refuse(records[i], exc)

    async def _refuse(self, rec: Any, exc: InvalidRecord) -> None:
        key = (rec.topic, rec.partition)
        if rec.offset < self._reported.get(key, 0):
            return  # dead-lettered by an earlier load
        self._reported[key] = rec.offset + 1
        await self.dead_letter(
            exc.reason, exc.detail, rec.topic, rec.partition, rec.offset, rec.key, rec.value
        )

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        """Apply new records one by one until a rebalance asks for another archive."""
        decoder = ChunkDecoder()
        held = self.held
        assert held is not None
        everything = len(held) >= self.partitions
        while not self._changed.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            cols, refused = decoder.decode([r.value for r in records])
            for i, exc in refused:
                await self._refuse(records[i], exc)
            for k in range(len(cols.index)):
                meter_id, area_id = cols.meter_ids[k], cols.area_ids[k]
                if not (everything or self._holds_area(area_id, held) or self.topology.knows(meter_id)):
                    continue  # another worker's meter
                record = MeterRecord(
                    meter_id,
                    area_id,
                    Role.SUPPLY if cols.supply[k] else Role.CUSTOMER,
                    cols.multipliers[k],
                    cols.classes[k],
                    cols.active[k],
                    self.topology.at(cols.starts[k]),
                )
                self.topology.apply(record)
                self.on_apply(record)
            self.on_count(self.topology.meter_count())

    def _holds_area(self, area_id: str, held: frozenset[int]) -> bool:
        # Not cached: live records are few, and a cache would grow to every area of the province.
        return area_partition(area_id, self.partitions) in held


def customer_ids(archive: MeterArchive) -> list[str]:
    """Ids of the archive's customer meters (and of every meter with a history), e.g. for the
    log mask."""
    pick = ((archive.flags & SUPPLY) == 0) | ((archive.flags & HISTORY) != 0)
    return [archive.meter_id(i) for i in np.flatnonzero(pick).tolist()]

