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
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from archive import (
    ACTIVE,
    HISTORY,
    SUPPLY,
    ArchiveBuilder,
    CodedChunk,
    MeterArchive,
    code_columns,
    intern,
    intern_numbers,
)
from streams import contracts
from streams.contracts import InvalidRecord
from streams.kafkaio import from_beginning, kafka_client_kwargs
from streams.settings import Settings
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


class _Row(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A topology record with the contract's cheap checks (lengths, ranges, enums) done by the
    decoder and its id patterns done per chunk (per field they were two thirds of the time)."""

    meter_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    area_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    role: Literal["customer", "supply"]
    multiplier: Annotated[float, msgspec.Meta(gt=0, lt=1e6)]
    customer_class: Annotated[str, msgspec.Meta(max_length=32)]
    active: bool
    effective_from: str
    v: Literal[1] = 1


_row_decoder = msgspec.json.Decoder(_Row)
_METER_ID, _AREA_ID, _ROLE, _MULTIPLIER, _CLASS, _ACTIVE, _EFFECTIVE_FROM, _ = (
    attrgetter(f) for f in _Row.__struct_fields__
)
_IS_SUPPLY = {"supply": True, "customer": False}  # a dict lookup: cheaper than calling str.__eq__
_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"


class Columns(msgspec.Struct):
    """Decoded topology records of one chunk, one list per field (ArchiveBuilder.add's input);
    ``index`` gives each row's position in the chunk."""

    index: list[int]
    meter_ids: list[str]
    area_ids: list[str]
    supply: list[bool]
    multipliers: list[float]
    classes: list[str]
    active: list[bool]
    starts: list[float]


class _Checked(msgspec.Struct):
    """A chunk's rows that passed every check, with the fields the checks pulled out."""

    rows: list[_Row]
    index: list[int]
    meter_ids: list[str]
    joined_ids: bytes  # "\n".join(meter_ids), ASCII (the id pattern allows nothing else)
    area_ids: list[str]
    areas: set[str]
    efs: list[str]
    ef_set: set[str]
    suspect: list[int]  # positions in the chunk for the contract's own decoder


class ChunkDecoder:
    """Decodes many topology records at once, with the contract's checks done per distinct
    value or over the whole chunk; a record that fails them is decoded again by the contract's
    own decoder for its exact reason."""

    def __init__(self) -> None:
        self._start_of: dict[str, float | None] = {}
        self._good_area: dict[str, bool] = {}

    def decode(self, values: Sequence[bytes | None]) -> tuple[Columns, list[tuple[int, InvalidRecord]]]:
        """Columns of the valid records; tombstones (None) are skipped, the rest refused with
        their position in ``values``."""
        checked = self._checked(values)
        cols = self._columns(checked)
        refused, rescued = self._refusals(values, checked.suspect)
        for i, rec in rescued:
            _append(cols, i, rec)
        return cols, refused

    def decode_coded(
        self, values: Sequence[bytes | None]
    ) -> tuple[CodedChunk, list[tuple[int, InvalidRecord]]]:
        """:meth:`decode` as the builder's coded columns, pulled from the decoded rows with one
        C-level pass per field and interned per distinct value (the bulk load's path)."""
        c = self._checked(values)
        refused, rescued = self._refusals(values, c.suspect)
        if rescued:  # valid after all, by a rule the row decoder does not know: rare, via lists
            cols = self._columns(c)
            for i, rec in rescued:
                _append(cols, i, rec)
            chunk = code_columns(cols.meter_ids, cols.area_ids, cols.supply, cols.multipliers, cols.classes,
                                 cols.active, cols.starts)
            return chunk, refused
        rows, n = c.rows, len(c.rows)
        # Id lengths from the separators' positions; the blob is the ids without them.
        ends = np.flatnonzero(np.frombuffer(c.joined_ids, dtype=np.uint8) == 10)
        bounds = np.concatenate(([-1], ends, [len(c.joined_ids)])) if n else np.zeros(1, dtype=np.int64)
        area_table, area = intern(c.area_ids, c.areas)
        class_table, cls = intern(list(map(_CLASS, rows)))
        ef_table, ef = intern(c.efs, c.ef_set)
        start_values = np.array([self._start_of[e] for e in ef_table], dtype=np.float64)
        start_table, start_code = intern_numbers(start_values)  # "Z" and "+00:00" are one start
        mult_table, mult = intern_numbers(np.fromiter(map(_MULTIPLIER, rows), dtype=np.float64, count=n))
        supply = np.fromiter(map(_IS_SUPPLY.__getitem__, map(_ROLE, rows)), dtype=bool, count=n)
        active = np.fromiter(map(_ACTIVE, rows), dtype=bool, count=n)
        chunk = CodedChunk(
            hashes=np.fromiter(map(hash, c.meter_ids), dtype=np.int64, count=n).view(np.uint64),
            id_blob=c.joined_ids.replace(b"\n", b""),
            id_len=(np.diff(bounds) - 1).astype(np.uint8),  # ids of at most 64 ASCII characters
            area_ids=area_table,
            area=area,
            classes=class_table,
            cls=cls,
            flags=supply.view(np.uint8) * np.uint8(SUPPLY) | active.view(np.uint8) * np.uint8(ACTIVE),
            multipliers=mult_table,
            mult=mult,
            starts=start_table,
            start=start_code[ef],
        )
        return chunk, refused

    def _columns(self, c: _Checked) -> Columns:
        rows = c.rows
        return Columns(
            c.index,
            c.meter_ids,
            c.area_ids,
            list(map("supply".__eq__, map(_ROLE, rows))),
            list(map(_MULTIPLIER, rows)),
            list(map(_CLASS, rows)),
            list(map(_ACTIVE, rows)),
            list(map(self._start_of.__getitem__, c.efs)),  # type: ignore[arg-type]
        )

    def _checked(self, values: Sequence[bytes | None]) -> _Checked:
        """The rows that decode and pass the checks the row decoder leaves out: the id patterns
        (over the whole chunk, or per distinct area) and effective_from (per distinct value)."""
        decode = _row_decoder.decode
        suspect: list[int] = []
        try:
            rows = list(map(decode, values))  # type: ignore[arg-type]
            index = list(range(len(values)))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            rows, index = [], []
            for i, value in enumerate(values):
                if value is None:
                    continue  # a tombstone: the archive keeps history, nothing to undo
                try:
                    rows.append(decode(value))
                    index.append(i)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    suspect.append(i)
        ids = list(map(_METER_ID, rows))
        joined = "\n".join(ids).encode()
        area_ids = list(map(_AREA_ID, rows))
        efs = list(map(_EFFECTIVE_FROM, rows))
        areas, ef_set = set(area_ids), set(efs)
        # Membership tests per new value (not `set - dict.keys()`: that walks the whole dict).
        good_area, start_of = self._good_area, self._start_of
        for a in [a for a in areas if a not in good_area]:
            good_area[a] = _good_id(a)
        for ef in [ef for ef in ef_set if ef not in start_of]:
            start_of[ef] = _start(ef)
        bad: set[int] = set()
        if ids and joined.translate(None, _ID_CHARS) != b"\n" * (len(ids) - 1):
            bad.update(k for k, m in enumerate(ids) if not _good_id(m))
        wrong_area = {a for a in areas if not good_area[a]}
        bad_starts = {ef for ef in ef_set if start_of[ef] is None}
        if wrong_area or bad_starts:
            bad.update(k for k, (a, ef) in enumerate(zip(area_ids, efs, strict=True))
                       if a in wrong_area or ef in bad_starts)
        if bad:
            suspect.extend(index[k] for k in bad)
            keep = [k for k in range(len(rows)) if k not in bad]
            rows, index = [rows[k] for k in keep], [index[k] for k in keep]
            ids, area_ids, efs = [ids[k] for k in keep], [area_ids[k] for k in keep], [efs[k] for k in keep]
            joined, areas = "\n".join(ids).encode(), set(area_ids)
            ef_set = set(efs)
        return _Checked(rows, index, ids, joined, area_ids, areas, efs, ef_set, sorted(suspect))

    @staticmethod
    def _refusals(
        values: Sequence[bytes | None], suspect: list[int]
    ) -> tuple[list[tuple[int, InvalidRecord]], list[tuple[int, contracts.TopologyRecord]]]:
        """The suspects' reasons from the contract's decoder, and those it takes after all (a
        check here stricter than the contract's: taken as they are)."""
        refused: list[tuple[int, InvalidRecord]] = []
        rescued: list[tuple[int, contracts.TopologyRecord]] = []
        for i in suspect:
            try:
                rec = contracts.decode_topology(values[i])
                MeterRecord(rec.meter_id, rec.area_id, Role(rec.role), rec.multiplier,
                            rec.customer_class, rec.active, rec.effective_from)
            except InvalidRecord as exc:
                refused.append((i, exc))
                continue
            except ValueError as exc:
                refused.append((i, InvalidRecord("topology", str(exc))))
                continue
            rescued.append((i, rec))
        return refused, rescued


def _start(value: str) -> float | None:
    """POSIX seconds of an effective_from, or None when the contract refuses it."""
    try:
        at = msgspec.convert(value, contracts.Instant)  # type: ignore[arg-type]
    except msgspec.ValidationError:
        return None
    return at.timestamp() if isinstance(at, datetime) else None


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


def _good_id(value: str) -> bool:
    return 1 <= len(value) <= 64 and not value.encode().translate(None, _ID_CHARS)


def _append(cols: Columns, i: int, rec: contracts.TopologyRecord) -> None:
    cols.index.append(i)
    cols.meter_ids.append(rec.meter_id)
    cols.area_ids.append(rec.area_id)
    cols.supply.append(rec.role == "supply")
    cols.multipliers.append(rec.multiplier)
    cols.classes.append(rec.customer_class)
    cols.active.append(rec.active)
    cols.starts.append(rec.effective_from.timestamp())


def add_values(
    builder: ArchiveBuilder, decoder: ChunkDecoder, values: Sequence[bytes | None]
) -> list[tuple[int, InvalidRecord]]:
    """Decode one chunk of the topic's values into ``builder``; the refused, by position."""
    chunk, refused = decoder.decode_coded(values)
    builder.add_coded(chunk)
    return refused


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

