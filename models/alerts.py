"""The alert book: turns detector events into opened / resolved alerts, one open alert per
(entity, type), so repeated detections never page twice (no storms)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

# Alert type (docs/contracts/alert.v1.schema.json) of a detector type; else "<kind>_<type>".
ALERT_TYPE: dict[tuple[str, str], str] = {
    ("meter", "zero"): "meter_zero_consumption",
    ("meter", "drop"): "meter_consumption_drop",
    ("meter", "consumption_drop"): "consumption_drop",
    ("meter", "consumption_zero"): "consumption_zero",
    ("meter", "rise"): "meter_consumption_rise",
    ("meter", "spike"): "meter_consumption_spike",
    ("meter", "rollback"): "meter_register_rollback",
    ("meter", "collapse"): "meter_arrears_risk",
    ("meter", "suspect"): "meter_theft_suspect",
    ("meter", "mapping_error"): "meter_mapping_error",
    ("area", "collection_outage"): "area_incomplete",
    ("meter", "large_day"): "meter_large_consumption_day",
    ("meter", "large_month"): "meter_large_consumption_month",
    ("meter", "tariff_mismatch"): "meter_tariff_mismatch",
}
# Severity by alert type; anything not listed is "warning".
SEVERITY: dict[str, str] = {
    "meter_zero_consumption": "page",
    "meter_consumption_drop": "page",
    "meter_register_rollback": "page",
    "meter_inactive_consumption": "page",
    "area_high_loss": "page",
    "area_incomplete": "info",
    # A drop the area's loss does not show (vacancy, holiday), appliance spikes and rises: what
    # households do, not theft; kept as information, never paged.
    "consumption_drop": "info",
    "consumption_zero": "info",
    "meter_consumption_spike": "info",
    "meter_consumption_rise": "info",
    "meter_missing": "info",
    # The volume-price-fee watch: checked against the customer's contract, not paged.
    "meter_large_consumption_day": "info",
    "meter_large_consumption_month": "info",
    "meter_tariff_mismatch": "info",
}


class Event(Protocol):
    """What a detector emits (``MeterEvent`` / ``AreaEvent`` fit)."""

    @property
    def type(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def firing(self) -> bool: ...
    @property
    def evidence(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """A detector event for a named entity (``kind`` = "meter" or "area")."""

    kind: str
    entity: str
    event: Event


@dataclass(slots=True)
class _Open:
    id: str
    detector_type: str
    type: str
    severity: str
    kind: str
    entity: str
    start: int
    score: float
    evidence: dict[str, Any]  # numbers, and names (e.g. an area id) where the type needs them


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class AlertBook:
    """Open alerts, keyed by (entity kind, entity, type).

    ``observe`` returns alert records (docs/contracts/alert.v1.schema.json): ``event`` is
    ``opened`` or ``resolved``; the window runs from the interval that opened the alert to the
    one that resolved it (or opened it, for ``opened``). A firing event for an open alert only
    raises its stored score (nothing is emitted); a clearing event resolves it.

    Examples
    --------
    >>> from models.meter_anomaly import MeterEvent
    >>> book = AlertBook()
    >>> fire = Observed("meter", "M1", MeterEvent(7, "zero", 4.0, True, {"run": 4.0}))
    >>> [r["event"] for r in book.observe([fire], 900)], book.observe([fire], 1800)
    (['opened'], [])
    >>> clear = Observed("meter", "M1", MeterEvent(7, "zero", 0.0, False, {}))
    >>> rec = book.observe([clear], 2700)[0]
    >>> rec["event"], rec["type"], rec["window_start"], rec["window_end"]
    ('resolved', 'meter_zero_consumption', '1970-01-01T00:15:00Z', '1970-01-01T00:45:00Z')
    """

    open: dict[tuple[str, str, str], _Open] = field(default_factory=dict)

    def observe(self, events: Iterable[Observed], ts: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for o in events:
            ev = o.event
            key = (o.kind, o.entity, ev.type)
            cur = self.open.get(key)
            if ev.firing:
                if cur is None:
                    kind = ALERT_TYPE.get((o.kind, ev.type), f"{o.kind}_{ev.type}")
                    cur = _Open(
                        f"{o.kind}:{o.entity}:{ev.type}:{ts}",
                        ev.type,
                        kind,
                        SEVERITY.get(kind, "warning"),
                        o.kind,
                        o.entity,
                        ts,
                        float(ev.score),
                        dict(ev.evidence),
                    )
                    self.open[key] = cur
                    out.append(self._record(cur, "opened", ts))
                elif ev.score > cur.score:
                    cur.score = float(ev.score)
            elif cur is not None:
                del self.open[key]
                out.append(self._record(cur, "resolved", ts, dict(ev.evidence) or None))
        return out

    @staticmethod
    def _record(a: _Open, event: str, ts: int, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "v": 1,
            "id": a.id,
            "type": a.type,
            "severity": a.severity,
            "entity_kind": a.kind,
            "entity_id": a.entity,
            "window_start": _iso(a.start),
            "window_end": _iso(ts),
            "score": a.score,
            "evidence": evidence if evidence is not None else a.evidence,
            "event": event,
            "at": _iso(ts),
        }

    def snapshot(self, select: Callable[[str, str], bool] | None = None) -> dict[str, Any]:
        """JSON-able state; ``select(kind, entity)`` keeps only some entities' alerts."""
        return {
            "v": 1,
            "open": [
                {
                    "id": a.id,
                    "detector_type": a.detector_type,
                    "type": a.type,
                    "severity": a.severity,
                    "kind": a.kind,
                    "entity": a.entity,
                    "start": a.start,
                    "score": a.score,
                    "evidence": a.evidence,
                }
                for a in self.open.values()
                if select is None or select(a.kind, a.entity)
            ],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> AlertBook:
        book = cls()
        book.merge(snapshot)
        return book

    def merge(self, snapshot: Mapping[str, Any]) -> None:
        """Add the open alerts of a snapshot (of some entities) to this book."""
        for d in snapshot["open"]:
            a = _Open(
                str(d["id"]),
                str(d["detector_type"]),
                str(d["type"]),
                str(d["severity"]),
                str(d["kind"]),
                str(d["entity"]),
                int(d["start"]),
                float(d["score"]),
                {str(k): v if isinstance(v, str) else float(v) for k, v in d["evidence"].items()},
            )
            self.open[(a.kind, a.entity, a.detector_type)] = a
