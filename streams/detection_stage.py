"""Detection in the worker (docs/detection.md, "In the worker"): windows closed for the first
time are learned by the pure detectors (models/detection.py), their alerts published, the
inspectors' verdicts learned, and each area's detector state kept in a changelogged table.

State per area is restored on the area's first closed window in this process and written back
from stream context (a Faust table cannot be written from a timer) in the area's partition,
only after the alerts it produced are acknowledged: a kill in between would otherwise leave a
state that has learned an interval and a topic without its alert.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from models.detection import Detection
from models.inspections import Inspection
from models.lineloss import LossResult
from streams import contracts
from streams.checkpoint import Checkpoint
from streams.deadletters import DeadLetters
from streams.engine import ClosedWindow
from streams.masking import MeterMask
from streams.metrics import Metrics
from streams.settings import Settings
from streams.step import closed_intervals
from topology import Topology

log = logging.getLogger("gridwatch")

# One detector-state changelog value at most: the Faust producer refuses requests over 1,000,000
# bytes, and the key and JSON framing take the rest.
DETECTOR_STATE_MAX_BYTES = 990_000


def encode_detector_state(blob: bytes) -> dict[str, str] | None:
    """The table value of an area's detector snapshot, zlib-compressed (the ranker's one-byte
    bins and the detector rows shrink ~2x); None when it would not fit one changelog record.

    >>> v = encode_detector_state(b"state" * 1000)
    >>> sorted(v), decode_detector_state(v) == b"state" * 1000, len(v["z64"]) < 100
    (['z64'], True, True)
    >>> import random
    >>> encode_detector_state(random.Random(0).randbytes(800_000)) is None  # incompressible
    True
    """
    text = base64.b64encode(zlib.compress(blob, 1)).decode("ascii")
    return {"z64": text} if len(text) <= DETECTOR_STATE_MAX_BYTES else None


def decode_detector_state(value: dict[str, str]) -> bytes:
    """The snapshot bytes of a table value written by this or an earlier version."""
    if "z64" in value:
        return zlib.decompress(base64.b64decode(value["z64"]))
    return base64.b64decode(value["b64"])


def ring_key(area: str, slot: str) -> str:
    """The table key of one ring slot of an area's suspect evidence (its state proper is keyed
    by the area id). The unit separator cannot occur in an area id (streams.contracts' id
    pattern), so no slot key is an area's.

    >>> ring_key("A0001", "h3")
    'A0001\\x1fh3'
    """
    return f"{area}\x1f{slot}"


def masked_alert(record: dict[str, Any], mask: MeterMask) -> dict[str, Any]:
    """A meter alert with its meter id (in ``entity_id`` and ``id``) replaced by the mask's
    keyed hash; area alerts and unmasked workers pass unchanged."""
    if not mask.enabled or record["entity_kind"] != "meter":
        return record
    real = str(record["entity_id"])
    masked = mask.meter(real)
    return {
        **record,
        "entity_id": masked,
        "id": str(record["id"]).replace(f"meter:{real}:", f"meter:{masked}:", 1),
    }


class DetectionStage:
    """The detectors of one worker, their alerts and their saved state."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        *,
        table: Any,
        alerts_topic: Any,
        checkpoint: Checkpoint,
        dead_letters: DeadLetters,
        metrics: Metrics,
        mask: MeterMask,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.table = table  # area -> encoded detector state
        self.alerts_topic = alerts_topic
        self.checkpoint = checkpoint
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.mask = mask
        self.detection = Detection(
            min_completeness=settings.min_completeness,
            interval_s=settings.interval_s,
            suspects=settings.suspects,
            suspect_score=settings.suspect_score,
            large_consumption_kwh=settings.large_consumption_limits,
            utc_offset_s=settings.local_utc_offset_s,
        )
        self._restored: set[str] = set()
        self._dirty: dict[int, set[str]] = {}  # partition -> areas to write back
        self._alert_sends: dict[int, list[Any]] = {}  # partition -> alert sends not yet acked
        self._partition: dict[str, int] = {}  # area -> partition
        self._meters: dict[str, list[str]] = {}  # area -> meters in its latest window
        self._open_types: set[str] = set()
        self._saved: dict[str, int] = {}  # area -> newest interval end in its saved state
        checkpoint.before_flush(self.save_all)  # once per commit, not per step: fewer writes

    def _restore(self, area: str) -> None:
        if area not in self._restored:
            saved = self.table.get(area)
            if saved:
                slots = {}
                for name in self.detection.ring_slot_names():
                    value = self.table.get(ring_key(area, name))
                    if value:
                        slots[name] = decode_detector_state(value)
                self.detection.restore_area(decode_detector_state(saved), slots)
            self._restored.add(area)

    async def _send_alerts(self, records: Iterable[dict[str, Any]], partition: int) -> None:
        for record in records:
            record = masked_alert(record, self.mask)
            self.metrics.alerts_emitted.labels(type=record["type"], event=record["event"]).inc()
            sent = await self.alerts_topic.send(
                key=str(record["entity_id"]).encode(), value=contracts.encode(record)
            )
            self._alert_sends.setdefault(partition, []).append(sent)

    async def learn(self, closed: list[ClosedWindow]) -> None:
        """Learn windows that closed for the first time (one step's, in the order closed: the
        meter detector steps their areas together) and publish the alerts they open or
        resolve. An interval learned before a restart is skipped, so nothing is learned or
        alerted twice once its state was saved."""
        if not closed:
            return
        det = self.detection
        s = self.settings
        intervals = []
        for window in closed:
            area = window.result.area_id
            self._restore(area)
            got = closed_intervals(det, window, self.topology, s.interval_s, s.window_s)
            if got:
                self._meters[area] = [det.meter_name(int(i)) for i in got[0].meters]
            self._partition[area] = window.partition
            intervals += got
        by_area = det.step_by_area(intervals)
        for area in dict.fromkeys(w.result.area_id for w in closed):
            records = by_area.get(area, [])
            partition = self._partition[area]
            # Saved when alerts changed, else at most every half allowed lateness: windows
            # learned since the last save are still in the window store after a crash (released
            # only after the lateness), so a restart learns them again from the saved state to
            # the same end.
            learned = det.learned.get(area, 0)
            if records or learned - self._saved.get(area, 0) >= s.allowed_lateness_s // 2:
                self._saved[area] = learned
                self._dirty.setdefault(partition, set()).add(area)
            await self._send_alerts(records, partition)

    async def inspections(self, stream: faust.StreamT) -> None:
        """Inspectors' verdicts: the classifier learns each on the suspect as published, and
        the suspect alert is resolved. Records are keyed by area, so a verdict reaches the
        worker that owns the area (co-partitioned with the readings)."""
        async for event in stream.events():
            msg = event.message
            try:
                await self.inspection(msg.topic, msg.partition, msg.offset, msg.key, msg.value)
            except Exception as exc:  # the worker never dies on one record
                log.exception("unexpected error on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
                await self.dead_letters.send(
                    "internal_error", repr(exc), msg.topic, msg.partition, msg.offset, msg.key, msg.value
                )

    async def inspection(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        try:
            record = Inspection.from_dict(orjson.loads(value or b""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            await self.dead_letters.send(
                "inspection", f"not an inspection record: {exc}", topic, partition, offset, key, value
            )
            return
        async with self.checkpoint.stepping:  # as a readings step: saves see it whole
            await self._verdict(record, partition)

    async def _verdict(self, record: Inspection, partition: int) -> None:
        when = datetime(record.date.year, record.date.month, record.date.day, tzinfo=UTC)
        rec = self.topology.meter_at(record.meter, when)
        area = rec.area_id if rec is not None else None
        if area is not None:
            self._restore(area)
        records = self.detection.learn_verdict(record.meter, record.verdict, int(when.timestamp()) + 86400)
        self.metrics.verdicts.labels(verdict=record.verdict.value, matched=str(bool(records)).lower()).inc()
        await self._send_alerts(records, partition)
        if records and area is not None and self._partition.get(area) == partition:
            self._dirty.setdefault(partition, set()).add(area)
            await self.save(partition)

    async def save_all(self) -> None:
        """:meth:`save` every partition with areas changed since the last save (each commit
        runs this: streams/checkpoint.py)."""
        for partition in sorted(self._dirty):
            await self.save(partition)

    async def save(self, partition: int) -> None:
        """Write back the detector state of this partition's areas: to the table and, with an
        explicit partition (chunks are processed outside Faust's per-event context), to its
        changelog; the next commit waits for these writes like for the windows'.

        The alerts the state has produced are acknowledged first: the state says which
        intervals were learned, and a restart does not learn (or alert) them again."""
        if not self._dirty.get(partition):
            return
        sends = self._alert_sends.pop(partition, [])
        if sends:
            failed = [
                r
                for r in await asyncio.gather(*sends, return_exceptions=True)
                if isinstance(r, BaseException)
            ]
            if failed:
                # Not saved: after a restart the intervals are learned again and the alerts re-sent.
                log.error(
                    "%d alert(s) of partition %d not acknowledged (%r): detector state not saved",
                    len(failed),
                    partition,
                    failed[0],
                )
                return
        areas = self._dirty.pop(partition)
        for area in sorted(areas):
            # The ring slots written since the last save first, then the rest of the state:
            # sent in this order to one partition, a head in the changelog has its slots before
            # it. A slot alone fits one record (a day of one byte per meter and bin).
            for name, blob in self.detection.take_ring_slots(area).items():
                self._write(partition, ring_key(area, name), blob, f"ring slot {name} of area {area}")
            head = self.detection.snapshot_area(area, self._meters.get(area, []), rings=False)
            self._write(partition, area, head, f"detector state of area {area}")

    def _write(self, partition: int, key: str, blob: bytes, what: str) -> None:
        """One table value, compressed, and its changelog write the next commit waits for.
        A value that would not fit one changelog record even compressed (the producer's 1 MB
        requests: a very large area, ~1,000 meters and more) is not saved but counted and
        logged, rather than failing the send and stopping the worker; what is unsaved is
        relearned after a restart (docs/detection.md)."""
        value = encode_detector_state(blob)
        if value is None:
            self.metrics.detector_state_unsaved.inc()
            log.error("%s exceeds one changelog record: not saved", what)
            return
        self.table.data[key] = value
        self.checkpoint.add(self.table.send_changelog(partition, key, value))

    def forget_partitions(self, partitions: set[int]) -> None:
        """Another worker owns these areas now; their state is read from the table again if
        they come back."""
        for area, p in list(self._partition.items()):
            if p in partitions:
                self.detection.forget_area(area, self._meters.pop(area, []))
                self._restored.discard(area)
                del self._partition[area]
                self._saved.pop(area, None)
        for p in partitions:
            self._dirty.pop(p, None)
            self._alert_sends.pop(p, None)

    def gauges(self, latest: Iterable[LossResult]) -> None:
        """Open anomalies by type, and the suspects of the worst areas of the latest window
        (``latest``: its results; the same top k as their loss gauge)."""
        det = self.detection
        counts = dict.fromkeys(self._open_types, 0)  # types no longer open read 0
        for alert in det.book.open.values():
            counts[alert.type] = counts.get(alert.type, 0) + 1
        self._open_types.update(counts)
        for kind, n in counts.items():
            self.metrics.anomalies_open.labels(type=kind).set(n)
        suspects: dict[str, list[float]] = {}
        for (kind, _, dtype), alert in det.book.open.items():
            if kind == "meter" and dtype == "suspect":
                area = str(alert.evidence.get("area_id"))
                suspects.setdefault(area, []).append(float(alert.evidence.get("share_of_area_loss", 0.0)))
        self.metrics.worst_area_suspects.clear()
        self.metrics.worst_area_suspect_share.clear()
        judged = [r for r in latest if r.loss_rate is not None]
        worst = sorted(judged, key=lambda r: (-(r.loss_rate or 0.0), r.area_id))[: self.settings.top_k_areas]
        for r in worst:
            shares = suspects.get(r.area_id, [])
            self.metrics.worst_area_suspects.labels(area_id=r.area_id).set(len(shares))
            self.metrics.worst_area_suspect_share.labels(area_id=r.area_id).set(max(shares, default=0.0))
        self.metrics.detector_meters.set(det.meters)
        self.metrics.detector_state_bytes.set(det.state_bytes())
