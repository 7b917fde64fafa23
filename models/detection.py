"""One detection code path for the worker and the offline evaluation.

:class:`Detection` owns the per-meter detector (numpy state indexed by a dense meter index it
assigns), the per-area detector (river) and the alert book, and turns one *area-interval* at a
time into alert records (docs/contracts/alert.v1.schema.json). The worker feeds it each
area-window when the window first closes; ``gridwatch evaluate`` feeds it a recorded or
simulated city. Both go through :meth:`Detection.step`, so the figures the evaluation reports
are the figures of the code that runs.

An area-interval is learned once: ``learned[area]`` is the newest interval end learned for the
area, and older or equal intervals are skipped (a worker re-emits closed windows after a restart;
they must not be learned twice). Per-area state (the area's meter rows, its river state, its
open alerts and ``learned``) is serialised by :meth:`Detection.snapshot_area` so the worker can
keep it in its changelogged table next to the area's windows, written in the same transaction of
offsets as the windows themselves.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from models.alerts import AlertBook, Observed
from models.area_anomaly import AreaAnomalyDetector
from models.balance import LossHistory
from models.columns import WindowColumns, interval_energies
from models.inspections import SuspectClassifier, Verdict
from models.large_consumption import LargeConsumptionDetector, LargeConsumptionEvent
from models.mapping import MappingErrorFinder
from models.meter_anomaly import MeterAnomalyDetector, MeterEvent
from models.suspects import Suspect, SuspectRanker
from models.tariff_class import TariffClassDetector, TariffClassEvent
from models.windows import interval_ends
from topology import MeterRecord, Role, Topology

# A meter's points in a window: interval end -> (register kWh, interval kWh), as the engine keeps them.
WindowPoints = dict[int, tuple[float | None, float | None]]

# An area's customer meters for the detectors (see Detection.roster): ids in order, dense
# indices, multipliers, in service, peer groups.
Roster = tuple[
    list[str], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.int64]
]

# Peer groups of the meter detector, by the archive's customer class.
CLASS_CODES: dict[str, int] = {"residential": 0, "commercial": 1, "industrial": 2}
OTHER_CLASS = 3
# Large consumption thresholds per customer class, (day kWh, month kWh): above what the
# realistic simulator's largest honest homes use (docs/detection.md, "Volume-price-fee watch").
DEFAULT_LARGE_CONSUMPTION_KWH: dict[str, tuple[float, float]] = {"residential": (300.0, 5000.0)}


def class_code(customer_class: str) -> int:
    """Peer-group code of a customer class (unknown classes form one group of their own).

    >>> class_code("industrial"), class_code("street_lighting")
    (2, 3)
    """
    return CLASS_CODES.get(customer_class, OTHER_CLASS)


_Sink = Callable[[str, list[dict[str, Any]]], Any]  # (area, its interval's alert records)


@dataclass(frozen=True, slots=True)
class AreaInterval:
    """What the detectors see of one area in one interval.

    ``meters`` are dense indices from :meth:`Detection.index`; ``energy`` is interval kWh after
    the multiplier (NaN = missing); ``supply_kwh`` the area's supplied energy in the interval
    (NaN when a supply meter is missing).
    """

    area_id: str
    ts: int
    meters: npt.NDArray[np.int64]
    energy: npt.NDArray[np.float64]
    backwards: npt.NDArray[np.bool_]
    active: npt.NDArray[np.bool_]
    group: npt.NDArray[np.int64]
    supply_kwh: float
    lower: float
    upper: float


def window_intervals(
    detection: Detection,
    area_id: str,
    window_start: int,
    points: dict[str, WindowPoints] | WindowColumns,
    topology: Topology,
    *,
    interval_s: int,
    window_s: int,
) -> list[AreaInterval]:
    """The area-intervals of one closed area-window, for :meth:`Detection.step`.

    Customers are the archive's active customer meters of the area at the window start, plus
    inactive ones that reported (consumption on an inactive meter is an anomaly); energies are
    after the archive multiplier; supply is NaN for an interval any supply meter missed.
    ``points`` are the window's columns (the columnar engine's) or its meter -> interval end
    -> (register, energy) dicts (the per-record engine's), read through the same columns.
    """
    ends = interval_ends(window_start, interval_s=interval_s, window_s=window_s)
    cols = (
        points
        if isinstance(points, WindowColumns)
        else WindowColumns.from_points(points, window_start, interval_s=interval_s, intervals=len(ends))
    )
    at = datetime.fromtimestamp(window_start, UTC)
    members = topology.customer_meters(area_id, at)  # shared, cached by the archive
    extra = []
    for meter_id in cols.meters:
        if meter_id in members:
            continue
        rec = topology.meter_at(meter_id, at)
        if rec is not None and rec.role is Role.CUSTOMER and rec.area_id == area_id and not rec.active:
            extra.append(rec)
    ids, idx, mult, active, group = detection.roster(area_id, members, extra)
    supplies = topology.supply_meters(area_id, at)
    bounds = topology.bounds_for(area_id)
    learned = detection.learned.get(area_id, -1)
    last_reg = detection.last_register
    # Customers' and supply meters' energies in one pass of the one energy function.
    register, energy = cols.rows([*ids, *supplies])
    kwh, back = interval_energies(register[:, 1:], register[:, :-1], energy[:, 1:])
    n = len(ids)
    supply_mult = [rec.multiplier for rec in supplies.values()]
    supply_kwh = kwh[n:].tolist()  # Python floats: summed as the scalar loop always did
    out: list[AreaInterval] = []
    for c, end in enumerate(ends):
        backwards = back[:n, c].copy()
        if end > learned and ids:
            # A register below the last one read went backwards, even across missing reads
            # (a meter swapped while it was not reading restarts low).
            reg = register[:n, c + 1]
            read = ~np.isnan(reg)
            backwards |= read & (reg < last_reg[idx])
            last_reg[idx[read]] = reg[read]
        supply = 0.0 if supplies else math.nan
        for e, m in zip(supply_kwh, supply_mult, strict=True):
            supply += e[c] * m
        out.append(
            AreaInterval(
                area_id,
                end,
                idx,
                kwh[:n, c] * mult,
                backwards,
                active,
                group,
                supply_kwh=supply,
                lower=bounds.lower,
                upper=bounds.upper,
            )
        )
    return out




class Detection:
    """Meter and area detectors and the alert book, fed one area-interval at a time.

    Examples
    --------
    >>> det = Detection(meter_kw={"warmup": 4}, area_kw={"warmup": 4})
    >>> idx = det.index(["M1", "M2", "M3", "M4", "M5", "M6"])
    >>> def interval(ts, m6_kwh):
    ...     e = np.array([1.0, 1.1, 0.9, 1.0, 1.2, m6_kwh])
    ...     return AreaInterval("A1", ts, idx, e, np.zeros(6, bool), np.ones(6, bool),
    ...                         np.zeros(6, np.int64), supply_kwh=6.6, lower=-0.01, upper=0.07)
    >>> records = [r for t in range(1, 20) for r in det.step([interval(900 * t, 1.0)])]
    >>> [r for t in range(20, 24) for r in det.step([interval(900 * t, 0.0)])
    ...  if r["type"] == "meter_zero_consumption"][0]["entity_id"]
    'M6'
    >>> det.step([interval(900 * 5, 0.0)])  # already learned: skipped
    []
    """

    def __init__(
        self,
        *,
        meter_kw: dict[str, Any] | None = None,
        area_kw: dict[str, Any] | None = None,
        capacity: int = 1024,
        min_completeness: float = 0.98,
        interval_s: int = 900,
        suspects: bool = False,
        suspect_score: float = 30.0,
        suspect_top: int = 3,
        mapping_every_s: int = 86400,
        large_consumption_kwh: Mapping[str, tuple[float, float]] | None = None,
        tariff_kw: dict[str, Any] | None = None,
        utc_offset_s: int = 0,
    ) -> None:
        self.interval_s = interval_s
        # Suspects (docs/suspects.md): ranked when an area's hour closes; published when the
        # score passes ``suspect_score`` or the area's loss alarm is open (not in negative-loss
        # areas: there the ranking explains a mapping error, which the finder looks for).
        self.ranker = SuspectRanker(interval_s=interval_s) if suspects else None
        # Learns from inspection verdicts on published suspects and re-ranks the next ones.
        self.classifier = SuspectClassifier() if suspects else None
        # The area's recent loss, to judge a zero run by the balance (with the ranking, as drops).
        self.balance = LossHistory() if suspects else None
        self.suspect_score, self.suspect_top = suspect_score, suspect_top
        self.mapping_every_s = mapping_every_s
        self._mapping_checked = -1
        self.meter_detector = MeterAnomalyDetector(capacity, **(meter_kw or {}))
        self.area_detector = AreaAnomalyDetector(**(area_kw or {}))
        # The volume-price-fee watch: large consumption per class, billed class vs load shape.
        limits = DEFAULT_LARGE_CONSUMPTION_KWH if large_consumption_kwh is None else large_consumption_kwh
        self.large_consumption = LargeConsumptionDetector(
            {class_code(c): v for c, v in limits.items()}, utc_offset_s=utc_offset_s, capacity=capacity
        )
        tariff = {"interval_s": interval_s, "utc_offset_s": utc_offset_s, "capacity": capacity}
        self.tariff_class = TariffClassDetector(**{**tariff, **(tariff_kw or {})})
        self.book = AlertBook()
        self.min_completeness = min_completeness
        self.learned: dict[str, int] = {}
        self._taken = np.zeros(0, dtype=bool)  # meters in the round being gathered (step)
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._rosters: dict[str, tuple[dict[str, MeterRecord], tuple[str, ...], Roster]] = {}
        # Last register read per meter (kWh, before multiplier; NaN = none yet): 8 bytes a meter.
        self.last_register: npt.NDArray[np.float64] = np.full(max(1, capacity), np.nan)

    # ---- meters ----------------------------------------------------------------------------

    def index(self, meter_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Dense indices of ``meter_ids``, assigning new ones on first sight."""
        out = np.empty(len(meter_ids), dtype=np.int64)
        for i, m in enumerate(meter_ids):
            j = self._index.get(m)
            if j is None:
                j = self._index[m] = len(self._names)
                self._names.append(m)
            out[i] = j
        if len(self._names) > len(self.last_register):
            grown = np.full(2 * len(self._names), np.nan)
            grown[: len(self.last_register)] = self.last_register
            self.last_register = grown
        return out

    def roster(
        self, area_id: str, members: dict[str, MeterRecord], extra: Sequence[MeterRecord] = ()
    ) -> Roster:
        """An area's customer meters in id order, with their dense indices, multipliers,
        in-service flags and peer groups: ``members`` (the archive's active customers, a dict
        the archive shares until it changes) plus ``extra`` records. Built once per archive
        state of the area, not per window (profiled: a tenth of learning a window)."""
        key = tuple(sorted(r.meter_id for r in extra))
        cached = self._rosters.get(area_id)
        if cached is not None and cached[0] is members and cached[1] == key:
            return cached[2]
        recs = dict(members)
        for r in extra:
            recs[r.meter_id] = r
        ids = sorted(recs)
        ordered = [recs[m] for m in ids]
        roster = (
            ids,
            self.index(ids),
            np.array([r.multiplier for r in ordered], dtype=np.float64),
            np.array([r.active for r in ordered], dtype=bool),
            np.array([class_code(r.customer_class) for r in ordered], dtype=np.int64),
        )
        self._rosters[area_id] = (members, key, roster)
        return roster

    def meter_name(self, index: int) -> str:
        return self._names[index]

    @property
    def meters(self) -> int:
        """Meters with a dense index (and so detector state)."""
        return len(self._names)

    def state_bytes_per_meter(self) -> int:
        """Bytes of per-meter state: the anomaly detectors' and the watch's."""
        return self.anomaly_state_bytes_per_meter() + self.watch_state_bytes_per_meter()

    def anomaly_state_bytes_per_meter(self) -> int:
        """The anomaly detectors' bytes a meter (the meter detector's arrays and the last
        register): what the 64-byte bar is on (docs/detection.md, "Volume-price-fee watch")."""
        return self.meter_detector.state_bytes_per_meter() + self.last_register.itemsize

    def watch_state_bytes_per_meter(self) -> int:
        """The volume-price-fee watch's bytes a meter (large consumption, tariff class)."""
        return self.large_consumption.state_bytes_per_meter() + self.tariff_class.state_bytes_per_meter()

    def state_bytes(self) -> int:
        """Bytes of per-meter detector state held for the indexed meters."""
        return self.meters * self.state_bytes_per_meter()

    # ---- one step --------------------------------------------------------------------------

    def step(self, intervals: Iterable[AreaInterval]) -> list[dict[str, Any]]:
        """Learn area-intervals (each area's intervals in time order) and return the alert
        records they open or resolve. Intervals at or before an area's ``learned`` mark are
        skipped.

        The meter detector steps a round of area-intervals at once (at most one interval per
        area, no meter twice: what a watermark closes across a partition's areas); the rest
        follows interval by interval in the given order, so the records and the state are
        those of one interval at a time."""
        records: list[dict[str, Any]] = []
        self._step(intervals, lambda _area, more: records.extend(more))
        return records

    def step_by_area(self, intervals: Iterable[AreaInterval]) -> dict[str, list[dict[str, Any]]]:
        """:meth:`step`, with each record under the area whose interval produced it (a
        mapping check's records under the area whose interval ran it): what a worker that
        saves state per area needs. The same records and state as :meth:`step`."""
        by_area: dict[str, list[dict[str, Any]]] = {}
        self._step(intervals, lambda area, more: by_area.setdefault(area, []).extend(more))
        return by_area

    def _step(self, intervals: Iterable[AreaInterval], sink: _Sink) -> None:
        round_: list[AreaInterval] = []
        areas: set[str] = set()
        taken = self._taken
        for iv in intervals:
            if iv.ts <= self.learned.get(iv.area_id, -1):
                continue
            if iv.area_id not in self.learned and np.isnan(iv.energy).all():
                continue  # no data yet (a stream's first window has only its end registers)
            top = int(iv.meters.max()) + 1 if len(iv.meters) else 0
            if top > len(taken):
                more = np.zeros(max(top, 2 * len(taken)) - len(taken), dtype=bool)
                taken = self._taken = np.concatenate([taken, more])
            if iv.area_id in areas or taken[iv.meters].any():
                self._learn(round_, sink)
                taken[:] = False
                round_, areas = [], set()
            self.learned[iv.area_id] = iv.ts
            round_.append(iv)
            areas.add(iv.area_id)
            taken[iv.meters] = True
        self._learn(round_, sink)
        taken[:] = False

    def _learn(self, round_: list[AreaInterval], sink: _Sink) -> None:
        """One round of :meth:`step`: the meter detector over all of it, then each interval
        (its records to ``sink`` under its area)."""
        if not round_:
            return
        expected = [self._expected_kwh(iv.meters) for iv in round_]  # before the step
        bounds = np.cumsum([0, *(len(iv.meters) for iv in round_)])
        cat = np.concatenate
        meter_events = self.meter_detector.step_many(
            cat([iv.meters for iv in round_]),
            cat([np.asarray(iv.energy, dtype=np.float64) for iv in round_]),
            cat([iv.backwards for iv in round_]),
            cat([iv.active for iv in round_]),
            cat([iv.group for iv in round_]),
            bounds,
        )
        for iv, events, exp in zip(round_, meter_events, expected, strict=True):
            records = self.book.observe(self._observe(iv, events, exp), iv.ts)
            if self.ranker is not None:
                names = [self._names[i] for i in iv.meters]
                self.ranker.observe(
                    iv.area_id, iv.ts - self.interval_s, names, iv.energy, iv.supply_kwh, iv.group
                )
                if iv.ts % self.ranker.bin_s == 0:
                    records += self.book.observe(self._suspects(iv.area_id), iv.ts)
                if iv.ts % self.mapping_every_s == 0 and iv.ts > self._mapping_checked:
                    self._mapping_checked = iv.ts
                    records += self.book.observe(self._mapping_errors(), iv.ts)
            sink(iv.area_id, records)

    def _suspects(self, area: str) -> list[Observed]:
        """Suspect events of one area after its hour closed: open for meters newly published,
        clear for published meters that fell below half the bar or out of the top."""
        assert self.ranker is not None
        loss_open = {t for (k, e, t) in self.book.open if k == "area" and e == area}
        ranked = [] if "negative_loss" in loss_open else self.ranker.rank(area, top=10)
        if self.classifier is not None:
            ranked = self.classifier.rerank(ranked)
        ranked = ranked[: self.suspect_top]
        alarm = bool(loss_open & {"high_loss", "loss_jump"})
        current = {
            e
            for (k, e, t), a in self.book.open.items()
            if k == "meter" and t == "suspect" and a.evidence.get("area_id") == area
        }
        out: list[Observed] = []
        keep: set[str] = set()
        for s in ranked:
            # An open loss alarm lowers the bar to a third; a published suspect stays until its
            # score falls below half of it.
            bar = self.suspect_score / 3 if alarm else self.suspect_score
            published = s.meter in current
            if s.score >= (bar / 2 if published else bar) and (published or self._balance_names(s)):
                keep.add(s.meter)
                evidence = {
                    **{f: getattr(s, f) for f in _SUSPECT_FIELDS},
                    "area_id": area,
                    "observed_kwh": round(s.expected_kwh - s.deficit_kwh, 4),
                    "share_of_area_loss": s.share_of_area_loss_explained,
                }
                out.append(Observed("meter", s.meter, _Event("suspect", s.score, True, _finite(evidence))))
        for meter in sorted(current - keep):
            out.append(Observed("meter", meter, _Event("suspect", 0.0, False, {"area_id": area})))
        return out

    def learn_verdict(self, meter: str, verdict: Verdict, ts: int) -> list[dict[str, Any]]:
        """An inspector's verdict on a meter: the classifier learns it on the suspect as it was
        published, and the suspect alert is resolved (the visit was made). Returns the alert
        records; nothing when the meter is not an open suspect here."""
        key = ("meter", meter, "suspect")
        published = self.book.open.get(key)
        if self.classifier is None or published is None:
            return []
        ev = published.evidence
        # A suspect published before a field existed reads it as 0.
        fields: dict[str, Any] = {
            f: (int(ev.get(f, 0)) if f in _INT_FIELDS else float(ev.get(f, 0.0))) for f in _SUSPECT_FIELDS
        }
        suspect = Suspect(area=str(ev["area_id"]), meter=meter, **fields)
        self.classifier.learn(suspect, verdict)
        done = _Event("suspect", 0.0, False, {"area_id": suspect.area, "verdict": verdict.value})
        return self.book.observe([Observed("meter", meter, done)], ts)

    def _mapping_errors(self) -> list[Observed]:
        """Mapping-error events over every area this process holds (a pair split across two
        workers' partitions is not seen: docs/suspects.md)."""
        assert self.ranker is not None
        found = {e.meter: e for e in MappingErrorFinder(self.ranker).find()}
        current = {e for (k, e, t) in self.book.open if k == "meter" and t == "mapping_error"}
        out = [
            Observed(
                "meter",
                e.meter,
                _Event(
                    "mapping_error",
                    e.score,
                    True,
                    {
                        "recorded_area": e.recorded_area,
                        "likely_area": e.likely_area,
                        "share_of_area_loss": e.share_likely,
                        "share_of_recorded_area_loss": e.share_recorded,
                        "observed_kwh": e.energy_kwh,
                    },
                ),
            )
            for e in found.values()
        ]
        out += [
            Observed("meter", m, _Event("mapping_error", 0.0, False, {}))
            for m in sorted(current - set(found))
        ]
        return out

    def _observe(
        self, iv: AreaInterval, meter_events: list[MeterEvent], expected: npt.NDArray[np.float64]
    ) -> list[Observed]:
        """What one area-interval opened or resolved, given the meter detector's events of it
        and its meters' usual energy before they were learned."""
        e = np.asarray(iv.energy, dtype=np.float64)
        ok = ~np.isnan(e) & iv.active
        n_active = int(iv.active.sum())
        completeness = float(ok.sum()) / n_active if n_active else 0.0
        sales = float(e[ok].sum())
        loss_rate: float | None = None
        s = float(iv.supply_kwh)
        if completeness >= self.min_completeness and not math.isnan(s) and s > 0:
            loss_rate = (s - sales) / s
        loss_kwh = s - sales if loss_rate is not None else None
        if self.balance is not None:
            self.balance.observe(iv.area_id, math.nan if loss_kwh is None else loss_kwh, s)
        observed: list[Observed] = []
        ranked: dict[str, Suspect] | None = None
        for ev in meter_events:
            pos = int(np.flatnonzero(iv.meters == ev.meter)[0])
            evidence = dict(ev.evidence)
            if ev.type in UNEXPLAINED:
                if not ev.firing:  # resolve whichever of the two the condition was opened as
                    clear = _Event(UNEXPLAINED[ev.type], 0.0, False, {})
                    observed.append(Observed("meter", self._names[ev.meter], clear))
                elif self.ranker is not None and not self._zero_shows(iv.area_id, ev):
                    if ranked is None and iv.area_id in self.ranker.areas:
                        ranked = {x.meter: x for x in self.ranker.rank(iv.area_id, top=None)}
                    if not self._loss_explains(self._names[ev.meter], ranked):
                        ev = dataclasses.replace(ev, type=UNEXPLAINED[ev.type])
            if ev.firing:
                obs = float(e[pos])
                exp = float(expected[pos])
                if not math.isnan(obs):
                    evidence["observed_kwh"] = round(obs, 6)
                    evidence["expected_kwh"] = round(exp, 6)
                    if loss_kwh is not None and loss_kwh > 0 and exp > obs:
                        evidence["share_of_area_loss"] = round((exp - obs) / loss_kwh, 6)
            observed.append(Observed("meter", self._names[ev.meter], _WithEvidence(ev, _finite(evidence))))
        watched: list[LargeConsumptionEvent | TariffClassEvent] = [
            *self.large_consumption.step(iv.ts, iv.meters, e, iv.group),
            *self.tariff_class.step(iv.ts, iv.meters, e, iv.group),
        ]
        for wev in watched:
            watch = _WithEvidence(wev, _finite(wev.evidence))
            observed.append(Observed("meter", self._names[wev.meter], watch))
        for aev in self.area_detector.step(
            iv.area_id, loss_rate=loss_rate, completeness=completeness, lower=iv.lower, upper=iv.upper
        ):
            evidence = dict(aev.evidence)
            if aev.firing and loss_rate is not None:
                evidence["observed_kwh"] = round(sales, 6)
                evidence["expected_kwh"] = round(s * (1 - min(max(iv.upper, 0.0), 1.0)), 6)
            observed.append(Observed("area", iv.area_id, _WithEvidence(aev, _finite(evidence))))
        return observed

    def _zero_shows(self, area: str, ev: Any) -> bool:
        """Whether a zero run that just opened shows in the area's loss: the loss over the run
        rose by about what the meter would have used (run x its mean interval energy). A stopped
        meter or a bypass does that at once; a home away does not (its supply fell too)."""
        if ev.type != "zero" or self.balance is None:
            return False
        run = ev.evidence.get("run", 0.0)
        return self.balance.shows(area, int(run), run * ev.evidence.get("mean_kwh", 0.0))

    def _loss_explains(self, meter: str, ranked: dict[str, Suspect] | None) -> bool:
        """Whether the area's energy balance names a meter whose drop just opened
        (docs/detection.md, "Drops and the energy balance"): the ranking would publish it as a
        suspect without a loss alarm (``_balance_names`` and a score at the bar)."""
        s = None if ranked is None else ranked.get(meter)
        return s is not None and s.score >= self.suspect_score and self._balance_names(s)

    def _balance_names(self, s: Suspect) -> bool:
        """The area's loss shows the meter's deficit: its joint share of the loss over the
        horizon is worth a third of the suspect bar, or its deficit's fit to the loss over the
        last days (one cause at a time, so held to the whole bar) is worth the bar. A deep drop
        alone is what households do (holidays, vacancies), not evidence of theft."""
        return s.joint_evidence >= self.suspect_score / 3 or s.loss_evidence >= self.suspect_score

    def _expected_kwh(self, meters: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """The meters' usual interval energy (EW mean) before this step."""
        self.meter_detector._grow(int(meters.max()) + 1 if len(meters) else 0)
        return np.asarray(self.meter_detector._a["mean"][meters], dtype=np.float64)

    # ---- per-area state --------------------------------------------------------------------

    def forget_area(self, area_id: str, meter_ids: Sequence[str]) -> None:
        """Drop what is held in memory for an area and its meters' alerts (another process
        owns them now); meter rows stay until they are restored or reused."""
        names = set(meter_ids)
        for key in [k for k in self.book.open if (k[1] == area_id if k[0] == "area" else k[1] in names)]:
            del self.book.open[key]
        self.learned.pop(area_id, None)
        self.area_detector.areas.pop(area_id, None)
        if self.ranker is not None:
            self.ranker.areas.pop(area_id, None)
        if self.balance is not None:
            self.balance.areas.pop(area_id, None)

    def _meter_rows(self, idx: npt.NDArray[np.int64]) -> list[tuple[str, npt.NDArray[Any]]]:
        """Every per-meter detector's state arrays, grown to hold ``idx`` (snapshot keys are
        unique across detectors)."""
        size = int(idx.max()) + 1 if len(idx) else 0
        out: list[tuple[str, npt.NDArray[Any]]] = []
        for det in (self.meter_detector, self.large_consumption, self.tariff_class):
            det._grow(size)
            out += det._a.items()
        return out

    def snapshot_area(self, area_id: str, meter_ids: Sequence[str], *, rings: bool = True) -> bytes:
        """The area's state: its meters' detector rows, its river state, the open alerts of the
        area and of those meters, and ``learned``; without the suspect ranker's rings when
        ``rings`` is False (saved slot by slot: :meth:`take_ring_slots`)."""
        idx = self.index(meter_ids)
        rows = {k: v[idx].tobytes() for k, v in self._meter_rows(idx)}
        rows["last_register"] = self.last_register[idx].tobytes()
        names = set(meter_ids)

        def mine(kind: str, entity: str) -> bool:
            return entity == area_id if kind == "area" else entity in names

        alerts = self.book.snapshot(mine)
        area_state = self.area_detector.areas.get(area_id)
        return msgspec.msgpack.encode(
            {
                "v": 1,
                "area": area_id,
                "learned": self.learned.get(area_id),
                "meters": list(meter_ids),
                "rows": rows,
                "river": pickle.dumps(area_state) if area_state is not None else None,
                "alerts": alerts,
                "suspects": _pack(self.ranker.snapshot_area(area_id, rings=rings))
                if self.ranker is not None and area_id in self.ranker.areas
                else None,
                "balance": _pack(self.balance.snapshot_area(area_id))
                if self.balance is not None and area_id in self.balance.areas
                else None,
                "classifier": self.classifier.snapshot() if self.classifier is not None else None,
            }
        )

    def ring_slot_names(self) -> list[str]:
        """The names of the ranker's ring slots of an area (none without suspects)."""
        return self.ranker.ring_slot_names() if self.ranker is not None else []

    def take_ring_slots(self, area_id: str) -> dict[str, bytes]:
        """The suspect ranker's ring slots of the area written since they were last taken, each
        one blob: with :meth:`snapshot_area` without rings, what a save of the area writes.
        A month of hourly evidence is most of an area's state; a save writes its last day.

        >>> det = Detection(meter_kw={"warmup": 4}, area_kw={"warmup": 4}, suspects=True)
        >>> det.take_ring_slots("A1")
        {}
        """
        if self.ranker is None or area_id not in self.ranker.areas:
            return {}
        return {
            name: msgspec.msgpack.encode(_pack(arrays))
            for name, arrays in self.ranker.take_ring_slots(area_id).items()
        }

    def restore_area(self, blob: bytes, ring_slots: Mapping[str, bytes] | None = None) -> str:
        """Load what :meth:`snapshot_area` wrote (and, for a snapshot without rings, the ring
        slots :meth:`take_ring_slots` wrote, by name); returns the area id."""
        d = msgspec.msgpack.decode(blob)
        if d.get("v") != 1:
            raise ValueError(f"unknown detection snapshot version {d.get('v')!r}")
        area_id = str(d["area"])
        idx = self.index([str(m) for m in d["meters"]])
        for k, arr in [*self._meter_rows(idx), ("last_register", self.last_register)]:
            raw = d["rows"].get(k)
            if raw is None or len(raw) != len(idx) * arr.itemsize:
                continue  # a field added or retyped since the snapshot starts from zero
            arr[idx] = np.frombuffer(raw, dtype=arr.dtype)
        if d["river"] is not None:
            self.area_detector.areas[area_id] = _RiverUnpickler(io.BytesIO(d["river"])).load()
        if d["learned"] is not None:
            self.learned[area_id] = int(d["learned"])
        if self.ranker is not None and d.get("suspects"):
            slots = {name: _unpack(msgspec.msgpack.decode(raw)) for name, raw in (ring_slots or {}).items()}
            self.ranker.restore_area(area_id, _unpack(d["suspects"]), slots)
        if self.balance is not None and d.get("balance"):
            self.balance.restore_area(area_id, _unpack(d["balance"]))
        saved = d.get("classifier")
        if self.classifier is not None and saved is not None:
            # One classifier per process, saved with every area: keep the most learned.
            if saved["found"] + saved["normal"] > self.classifier.found + self.classifier.normal:
                self.classifier = SuspectClassifier.restore(saved)
        self.book.merge(d["alerts"])
        return area_id


# Suspect fields carried in a suspect alert's evidence (so a verdict can be learned on the
# suspect as it was published, even after a restart).
_SUSPECT_FIELDS = (
    "rank",
    "score",
    "loss_evidence",
    "drop_evidence",
    "share_of_area_loss_explained",
    "correlation",
    "deficit_kwh",
    "expected_kwh",
    "relative_drop",
    "zero_share",
    "drop_start",
    "drop_end",
    "area_loss_rate",
    "area_loss_rate_change",
    "joint_evidence",
    "stolen_kwh",
    "theft_days",
    "theft_start",
    "theft_end",
)
_INT_FIELDS = ("rank", "drop_start", "drop_end", "theft_days", "theft_start", "theft_end")


def _pack(arrays: dict[str, npt.NDArray[Any]]) -> dict[str, list[Any]]:
    """numpy arrays as [dtype, shape, bytes] (msgpack-able, no pickle)."""
    return {k: [v.dtype.str, list(v.shape), v.tobytes()] for k, v in arrays.items()}


def _unpack(packed: dict[str, list[Any]]) -> dict[str, npt.NDArray[Any]]:
    return {
        k: np.frombuffer(raw, dtype=np.dtype(dt)).reshape(shape).copy()
        for k, (dt, shape, raw) in packed.items()
    }


def _finite(evidence: dict[str, Any]) -> dict[str, Any]:
    """Evidence fit for JSON: a missing value (NaN) is left out rather than sent as null."""
    return {
        str(k): v if isinstance(v, str) else float(v)
        for k, v in evidence.items()
        if isinstance(v, str) or math.isfinite(v)
    }


@dataclass(frozen=True, slots=True)
class _Event:
    """An event of the suspect ranking or the mapping finder, for the alert book."""

    type: str
    score: float
    firing: bool
    evidence: dict[str, Any]


# A consumption drop or zero run the area's energy balance does not show: its own type
# (information, not paged, not a suspect). A zero run pages when the loss rose by about what the
# meter would have used (a stopped meter, within its four intervals) or the ranking names it
# (docs/detection.md).
UNEXPLAINED = {"drop": "consumption_drop", "zero": "consumption_zero"}


@dataclass(frozen=True, slots=True)
class _WithEvidence:
    """A detector event with the evidence the alert carries."""

    inner: Any
    evidence: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.inner.type)

    @property
    def score(self) -> float:
        return float(self.inner.score)

    @property
    def firing(self) -> bool:
        return bool(self.inner.firing)


class _RiverUnpickler(pickle.Unpickler):
    """Unpickles the area detector's river objects and nothing else (the blob comes from a
    Kafka changelog: never let it name arbitrary callables)."""

    _ALLOWED_MODULES = ("river.", "models.area_anomaly")
    _ALLOWED = frozenset(
        {
            ("builtins", "getattr"),  # PageHinkley keeps a bound method of itself
            ("copyreg", "_reconstructor"),
            ("builtins", "object"),
            ("collections", "deque"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or module.startswith(self._ALLOWED_MODULES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a detection snapshot")
