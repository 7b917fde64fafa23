"""models.detection: the shared path from an area-window's points to alert records."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np

from models.detection import AreaInterval, Detection, window_intervals
from topology import Area, MeterRecord, Role, Topology

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
IDS = [f"M{i}" for i in range(8)]


def interval(det: Detection, ts: int, energy: list[float], supply: float = 10.0) -> AreaInterval:
    n = len(energy)
    return AreaInterval(
        "A1",
        ts,
        det.index(IDS[:n]),
        np.array(energy, dtype=float),
        np.zeros(n, bool),
        np.ones(n, bool),
        np.zeros(n, np.int64),
        supply_kwh=supply,
        lower=-0.01,
        upper=0.07,
    )


def run(det: Detection, first: int, last: int, stop: int | None = None, seed: int = 1) -> list[dict]:
    """Eight meters; from ``stop`` on meter M3 bills nothing but still draws (a bypass)."""
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for t in range(1, last):
        e = list(rng.uniform(0.8, 1.2, len(IDS)))
        supply = sum(e) * 1.03
        if stop is not None and t >= stop:
            e[3] = 0.0
        if t >= first:
            out += det.step([interval(det, 900 * t, e, supply=supply)])
    return out


def test_a_stopped_meter_opens_one_alert_and_a_clean_series_none() -> None:
    clean = run(Detection(meter_kw={"warmup": 24}, area_kw={"warmup": 24}), 1, 200)
    assert clean == []
    # M3's energy is about 1/8 of the supply and the loss was 3%: it explains most of the loss
    alerts = run(Detection(meter_kw={"warmup": 24}, area_kw={"warmup": 24}), 1, 200, stop=120)
    opened = [(r["type"], r["entity_id"]) for r in alerts if r["event"] == "opened"]
    assert opened.count(("meter_zero_consumption", "M3")) == 1
    zero = next(r for r in alerts if r["type"] == "meter_zero_consumption")
    ev = zero["evidence"]
    assert ev["observed_kwh"] == 0.0 and 0.8 < ev["expected_kwh"] < 1.2
    assert 0.6 < ev["share_of_area_loss"] <= 1.0
    assert all(math.isfinite(v) for r in alerts for v in r["evidence"].values())


def test_learned_intervals_are_skipped() -> None:
    det = Detection(meter_kw={"warmup": 24})
    run(det, 1, 50)
    before = det.snapshot_area("A1", IDS)
    assert det.step([interval(det, 900 * 10, [0.0] * 8)]) == []
    assert det.snapshot_area("A1", IDS) == before


def test_snapshot_restore_continues_identically() -> None:
    kw = {"meter_kw": {"warmup": 24}, "area_kw": {"warmup": 24}}
    whole = Detection(**kw)
    a = run(whole, 1, 200, stop=100)
    part = Detection(**kw)
    run(part, 1, 110, stop=100)
    resumed = Detection(**kw)
    resumed.index(["someone-else"])  # dense indices differ between processes
    assert resumed.restore_area(part.snapshot_area("A1", IDS)) == "A1"
    b = [r for r in a if r["at"] <= "1970-01-02T03:15:00Z"]  # up to t = 109
    b += run(resumed, 110, 200, stop=100)
    assert b == a


def test_forget_area_drops_its_alerts() -> None:
    det = Detection(meter_kw={"warmup": 24})
    run(det, 1, 150, stop=100)
    assert any(k[1] == "M3" for k in det.book.open)
    det.forget_area("A1", IDS)
    assert not det.book.open and "A1" not in det.learned


def test_window_intervals_from_engine_points() -> None:
    topo = Topology()
    topo.set_area(Area("A1", "urban"))
    for m, active in (("C1", True), ("C2", True), ("C3", False)):
        topo.apply(MeterRecord(m, "A1", Role.CUSTOMER, 2.0, "commercial", active, EPOCH))
    topo.apply(MeterRecord("S1", "A1", Role.SUPPLY, 10.0, "supply", True, EPOCH))
    points = {
        "C1": {0: (100.0, None), 900: (101.0, None), 1800: (101.5, None)},
        "C2": {0: (50.0, None), 900: (40.0, None)},  # swapped: backwards, then missing
        "C3": {900: (None, 0.4)},  # inactive, but consuming
        "S1": {0: (10.0, None), 900: (10.5, None)},
    }
    det = Detection()
    ivs = window_intervals(det, "A1", 0, points, topo, interval_s=900, window_s=1800)
    assert [iv.ts for iv in ivs] == [900, 1800]
    names = [det.meter_name(int(i)) for i in ivs[0].meters]
    assert names == ["C1", "C2", "C3"]
    first, second = ivs
    assert first.energy[0] == 2.0 and math.isnan(first.energy[1]) and first.backwards[1]
    assert first.energy[2] == 0.8 and not first.active[2]
    assert first.supply_kwh == 5.0 and math.isnan(second.supply_kwh)
    assert second.energy[0] == 1.0 and math.isnan(second.energy[1]) and not second.backwards[1]
    assert list(first.group) == [1, 1, 1]
    assert (first.lower, first.upper) == (topo.bounds_for("A1").lower, topo.bounds_for("A1").upper)


def test_a_register_restarting_low_after_missing_reads_went_backwards() -> None:
    topo = Topology()
    topo.set_area(Area("A1", "urban"))
    topo.apply(MeterRecord("C1", "A1", Role.CUSTOMER, 1.0, "residential", True, EPOCH))
    det = Detection()
    windows = [
        {"C1": {0: (500.0, None), 900: (501.0, None)}},
        {"C1": {900: (501.0, None)}},  # the read at 1800 is missing: the meter is being swapped
        {"C1": {2700: (3.0, None)}},  # the new meter, read for the first time
        {"C1": {2700: (3.0, None), 3600: (3.5, None)}},
    ]
    back = []
    for k, points in enumerate(windows):
        ivs = window_intervals(det, "A1", 900 * k, points, topo, interval_s=900, window_s=900)
        back += [bool(iv.backwards[0]) for iv in ivs]
        det.step(ivs)
    assert back == [False, False, True, False]


def meters_interval(
    det: Detection, ids: list[str], t: int, billed: np.ndarray, supply: float
) -> AreaInterval:
    """Interval ``t`` of area A1: every meter active, in one peer group, none going backwards."""
    n = len(ids)
    z = np.zeros(n, bool)
    return AreaInterval(
        "A1", 900 * t, det.index(ids), billed, z, ~z, np.zeros(n, np.int64), supply, -0.01, 0.07
    )


def thief_area(
    det: Detection, first: int, last: int, thief_at: int = 150, *, honest: bool = False
) -> list[dict]:
    """30 meters with a daily shape; from ``thief_at`` M3 bills half of what it draws (or, when
    ``honest``, really draws half: the supply falls with it)."""
    ids = [f"M{i}" for i in range(30)]
    rng = np.random.default_rng(1)
    mean = rng.lognormal(0.0, 0.4, len(ids))
    out: list[dict] = []
    for t in range(1, last):
        real = mean * (1 + 0.5 * np.sin(2 * np.pi * t / 96)) * rng.lognormal(-0.02, 0.2, len(ids))
        billed = real.copy()
        if t >= thief_at:
            billed[3] *= 0.5
            if honest:
                real[3] *= 0.5
        if t >= first:
            out += det.step([meters_interval(det, ids, t, billed, float(real.sum() * 1.03))])
    return out


def test_the_thief_is_published_as_a_suspect_with_evidence() -> None:
    alerts = thief_area(Detection(suspects=True), 1, 400)
    suspects = [r for r in alerts if r["type"] == "meter_theft_suspect"]
    assert [(r["entity_id"], r["event"]) for r in suspects] == [("M3", "opened")]
    ev = suspects[0]["evidence"]
    assert ev["area_id"] == "A1" and ev["rank"] == 1.0 and ev["share_of_area_loss"] > 0.4
    delay_h = (datetime.fromisoformat(suspects[0]["at"]).timestamp() - 900 * 150) / 3600
    assert delay_h <= 24, f"suspect published {delay_h:.1f} h after the onset"
    assert not any(
        r["type"] == "meter_theft_suspect" for r in thief_area(Detection(suspects=True), 1, 400, 10**6)
    )


def test_suspect_state_survives_a_snapshot() -> None:
    whole = thief_area(Detection(suspects=True), 1, 400)
    part = Detection(suspects=True)
    before = thief_area(part, 1, 160)
    resumed = Detection(suspects=True)
    resumed.restore_area(part.snapshot_area("A1", [f"M{i}" for i in range(30)]))
    assert before + thief_area(resumed, 160, 400) == whole


def test_a_verdict_resolves_the_suspect_and_teaches_the_classifier() -> None:
    from models.inspections import Verdict

    det = Detection(suspects=True)
    thief_area(det, 1, 400)
    assert ("meter", "M3", "suspect") in det.book.open
    assert det.learn_verdict("M7", Verdict.NORMAL, 900 * 400) == []  # not a suspect: nothing to learn
    records = det.learn_verdict("M3", Verdict.THEFT, 900 * 400)
    assert [(r["type"], r["event"], r["evidence"]["verdict"]) for r in records] == [
        ("meter_theft_suspect", "resolved", "theft")
    ]
    assert det.classifier is not None and det.classifier.found == 1
    resumed = Detection(suspects=True)
    resumed.restore_area(det.snapshot_area("A1", [f"M{i}" for i in range(30)]))
    assert resumed.classifier is not None and resumed.classifier.found == 1


def test_a_customer_mapped_to_the_wrong_area_raises_a_mapping_alert() -> None:
    """MX is billed under area A but fed from area B: A's loss goes negative, B's high, by
    MX's energy; the daily check names MX, its recorded area and its likely one."""
    det = Detection(suspects=True)
    rng = np.random.default_rng(3)
    a_ids, b_ids = [f"A-M{i}" for i in range(20)] + ["MX"], [f"B-M{i}" for i in range(20)]
    mean_a, mean_b = rng.lognormal(0.0, 0.4, 20), rng.lognormal(0.0, 0.4, 20)
    alerts: list[dict] = []
    for t in range(1, 96 * 3 + 1):
        shape = 1 + 0.5 * np.sin(2 * np.pi * t / 96)
        ea = mean_a * shape * rng.lognormal(-0.02, 0.2, 20)
        eb = mean_b * shape * rng.lognormal(-0.02, 0.2, 20)
        mx = 4.0 * shape * rng.lognormal(-0.02, 0.1)
        for area, ids, billed, supply in (
            ("A", a_ids, np.append(ea, mx), ea.sum() * 1.03),
            ("B", b_ids, eb, (eb.sum() + mx) * 1.03),
        ):
            n = len(ids)
            iv = AreaInterval(
                area,
                900 * t,
                det.index(ids),
                billed,
                np.zeros(n, bool),
                np.ones(n, bool),
                np.zeros(n, np.int64),
                supply_kwh=float(supply),
                lower=-0.01,
                upper=0.07,
            )
            alerts += det.step([iv])
    found = [r for r in alerts if r["type"] == "meter_mapping_error"]
    assert [(r["entity_id"], r["event"]) for r in found] == [("MX", "opened")]
    ev = found[0]["evidence"]
    assert (ev["recorded_area"], ev["likely_area"]) == ("A", "B")
    assert found[0]["at"] == "1970-01-03T00:00:00Z"  # the second midnight: a day of judged bins


def test_a_drop_the_loss_does_not_show_is_information_not_a_page() -> None:
    """The same drop of M3 makes it a theft suspect when the area's balance shows it, and is a
    ``consumption_drop`` information event, never a suspect nor a page, when the supply fell
    with it."""
    theft = thief_area(Detection(suspects=True), 1, 400)
    opened = {(r["type"], r["severity"]) for r in theft if (r["entity_id"], r["event"]) == ("M3", "opened")}
    assert ("meter_theft_suspect", "warning") in opened
    innocent = thief_area(Detection(suspects=True), 1, 400, honest=True)
    m3 = [r for r in innocent if (r["entity_id"], r["event"]) == ("M3", "opened")]
    opened = {(r["type"], r["severity"]) for r in m3}
    assert ("consumption_drop", "info") in opened
    assert not {t for t, _ in opened} & {"meter_consumption_drop", "meter_theft_suspect"}
    assert not any(r["severity"] == "page" for r in innocent if r["entity_kind"] == "meter")


def zero_area(det: Detection, last: int, at: int, *, draws: bool, m3_kwh: float) -> list[dict]:
    """30 meters with a daily shape, M3 using about ``m3_kwh`` an interval; the supply register
    steps by 0.1 kWh. From ``at`` M3 registers nothing: still drawing (``draws``: a stopped
    meter or a bypass, the loss rises by its use) or really using nothing (away: the supply
    falls with it)."""
    ids = [f"M{i}" for i in range(30)]
    rng = np.random.default_rng(2)
    mean = rng.lognormal(0.0, 0.4, len(ids))
    mean[3] = m3_kwh
    register, out = 1000.0, []
    for t in range(1, last):
        real = mean * (1 + 0.5 * np.sin(2 * np.pi * t / 96)) * rng.lognormal(-0.02, 0.2, len(ids))
        billed = real.copy()
        if t >= at:
            billed[3] = 0.0
            if not draws:
                real[3] = 0.0
        before, register = register, register + float(real.sum() * 1.03 + 0.3)
        out += det.step([meters_interval(det, ids, t, billed, round(register, 1) - round(before, 1))])
    return out


def test_a_zero_run_the_loss_does_not_show_is_information() -> None:
    """A home that uses about 1 kWh an interval reads zero from interval 150 because nobody is
    there (the supply falls with it): ``consumption_zero``, information, not a page, however
    much it would have used."""
    alerts = zero_area(Detection(suspects=True), 250, 150, draws=False, m3_kwh=1.0)
    m3 = {(r["type"], r["severity"]) for r in alerts if (r["entity_id"], r["event"]) == ("M3", "opened")}
    assert ("consumption_zero", "info") in m3
    assert not any(r["severity"] == "page" for r in alerts if r["entity_kind"] == "meter")


def test_a_stopped_meter_pages_within_four_intervals_when_the_loss_shows_it() -> None:
    """A small home (0.1 kWh an interval, 0.4 kWh over four: below any size threshold) whose
    meter stops while it still draws: the area's loss rises by its use at once, so the zero run
    pages (``meter_zero_consumption``) within four intervals, with no ranking needed."""
    alerts = zero_area(Detection(suspects=True), 250, 150, draws=True, m3_kwh=0.1)
    zero = [r for r in alerts if r["type"] == "meter_zero_consumption" and r["event"] == "opened"]
    assert [r["entity_id"] for r in zero] == ["M3"]
    assert zero[0]["severity"] == "page"
    delay = (datetime.fromisoformat(zero[0]["at"]).timestamp() - 900 * 150) / 900 + 1
    assert delay <= 4, f"paged after {delay} intervals"
    assert not any(r["type"] == "consumption_zero" for r in alerts)


def test_the_area_loss_history_survives_a_snapshot() -> None:
    """Restored just before the meter stops, a worker pages it as one that never stopped: the
    area's loss history travels in the snapshot (without it the zero run is not judged)."""
    whole = zero_area(Detection(suspects=True), 250, 150, draws=True, m3_kwh=0.1)
    part = Detection(suspects=True)
    zero_area(part, 149, 150, draws=True, m3_kwh=0.1)
    resumed = Detection(suspects=True)
    resumed.restore_area(part.snapshot_area("A1", [f"M{i}" for i in range(30)]))
    assert zero_area(resumed, 250, 150, draws=True, m3_kwh=0.1) == whole


def test_saves_write_only_the_ring_slots_written_since_the_last_and_restore_whole() -> None:
    kw = {"meter_kw": {"warmup": 24}, "area_kw": {"warmup": 24}, "suspects": True}
    whole = Detection(**kw)
    a = run(whole, 1, 400, stop=250)
    part = Detection(**kw)
    slots: dict[str, bytes] = {}
    sizes = []
    for first, last in ((1, 60), (60, 130), (130, 200), (200, 270)):
        run(part, first, last, stop=250)
        taken = part.take_ring_slots("A1")
        sizes.append(len(taken))
        slots.update(taken)
        head = part.snapshot_area("A1", IDS, rings=False)
    # 33 slots (a month of hours in days, 3 days of finer bins); a save writes the slots its
    # intervals touched (17.5 hours: at most two of each ring), never an empty one
    assert len(part.ring_slot_names()) == 33
    assert sizes[0] == 2 and all(1 <= n <= 4 for n in sizes[1:])
    assert sorted(slots) == ["h0", "h1", "h2", "w0", "w1", "w2"]
    assert len(head) < len(part.snapshot_area("A1", IDS)) / 2
    resumed = Detection(**kw)
    resumed.index(["someone-else"])
    assert resumed.restore_area(head, slots) == "A1"
    assert resumed.ranker is not None and part.ranker is not None
    got, want = resumed.ranker.snapshot_area("A1"), part.ranker.snapshot_area("A1")
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k], equal_nan=got[k].dtype.kind == "f") for k in want)
    b = [r for r in a if r["at"] <= "1970-01-03T19:15:00Z"]  # up to t = 269
    b += run(resumed, 270, 400, stop=250)
    assert b == a
    # a slot lost (not in the store) is an empty day of the ring, not an error; a slot the head
    # does not list (an earlier state of the area's) is not read
    lost = Detection(**kw)
    stale = {**{k: v for k, v in slots.items() if k != "h0"}, "h9": slots["h0"]}
    lost.restore_area(head, stale)
    assert lost.ranker is not None
    assert (lost.ranker.areas["A1"].energy[:, :24] == 255).all()
    assert (lost.ranker.areas["A1"].energy[:, 9 * 24 : 10 * 24] == 255).all()
    assert (lost.ranker.areas["A1"].bins[9 * 24 : 10 * 24] == -1).all()
