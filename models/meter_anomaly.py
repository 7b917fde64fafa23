"""Per-meter consumption anomalies, vectorised over dense meter indices.

One :class:`MeterAnomalyDetector` serves millions of meters: its state is a handful of numpy
arrays indexed by a dense meter index the caller assigns (meter id -> int), 50 bytes a meter,
instead of one Python (or river) object per meter. A step is one interval of one area.

What it scores (the event ``score``; higher = more anomalous):

* ``zero``: run of zero intervals on a meter that normally consumes (score = run length).
* ``spike``: an interval far above the meter's own exponentially weighted mean / variance
  (score = z).
* ``drop`` / ``rise``: sustained change of the meter's shape-free consumption: its energy over
  its peers' current level, the median over the peer group of each peer's energy over that
  peer's own baseline, so the daily load shape and the weather cancel. One-sided CUSUMs of the
  clipped log ratio to the meter's own (log) baseline, with a slack; baselines are frozen while
  an alarm is open (score = CUSUM / threshold).
* ``flat_line``: identical non-zero interval energies (a stuck register or repeated value).
* ``rollback``: register went backwards, or negative interval energy.
* ``inactive_consumption``: energy on a meter flagged inactive.
* ``missing``: run of missing intervals (not counted while most of the area is missing: that is
  a collection outage, see :mod:`models.area_anomaly`).
* ``collapse``: a large customer (peer groups ``collapse_groups``: commercial, industrial) whose
  consumption over about a day has fallen below a small fraction of its usual level: an
  arrears-risk warning (score = share of the usual consumption that is gone).

Events are emitted on transitions only: ``firing=True`` when a condition opens, ``firing=False``
when it clears, so the work and output scale with anomalies, not with their duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.meter_state import bytes_per_meter, grow_columns, new_columns

TYPES = (
    "zero",
    "spike",
    "drop",
    "rise",
    "flat_line",
    "rollback",
    "inactive_consumption",
    "missing",
    "collapse",
)
_BIT = {t: np.uint16(1 << i) for i, t in enumerate(TYPES)}

F32 = np.float32
# name -> dtype of the per-meter state arrays (snapshot keys)
_STATE: dict[str, type[np.generic]] = {
    "n": np.uint16,  # valid intervals seen (saturates)
    "ns": np.uint16,  # shape-free consumptions learned into the baseline (saturates)
    "mean": F32,  # EW mean of interval energy (kWh)
    "var": F32,  # EW variance of interval energy
    "lshare": F32,  # robust EW mean of log(energy / peers' level): the drop / rise baseline
    "lshare_var": F32,  # EW variance of the (clipped) log deviation from it
    "zrate": F32,  # EW rate of zero intervals
    "cus_lo": F32,  # drop CUSUM
    "cus_hi": F32,  # rise CUSUM
    "last": F32,  # last valid energy (flat-line test)
    "quantum": np.float16,  # smallest recent positive energy: the register step x multiplier
    "level": F32,  # EW mean of interval energy over about a day (collapse test)
    "zrun": np.uint16,  # consecutive zero intervals
    "frun": np.uint16,  # consecutive repeats of the same non-zero energy
    "mrun": np.uint16,  # consecutive missing intervals
    "open": np.uint16,  # bit per TYPES entry: condition currently open
}


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """A condition opening (``firing``) or clearing on one meter."""

    meter: int
    type: str
    score: float
    firing: bool
    evidence: dict[str, float] = field(default_factory=dict)


class MeterAnomalyDetector:
    """Vectorised per-meter anomaly detector.

    Parameters
    ----------
    capacity
        Initial number of meters; arrays double when a larger index arrives.
    alpha
        Weight of a new interval in the EW mean / variance of energy (about 1 / (2 days)).
    share_alpha
        Weight of a new interval in the drop / rise baseline (the log of the meter's energy over
        its peers' level; about 1 / (5 days)); a running mean while the meter is young.
    warmup
        Valid intervals a meter needs before spike can fire, and learned baseline intervals
        before drop / rise can (and before the meter counts as a peer whose baseline is known).
    zero_run
        Consecutive zero intervals that raise ``zero`` on a meter that practically never reads
        zero (``zrate <= zero_rate_max``) or whose expected energy over the run (run length x
        its usual share of its peers' current level) is at least ``zero_steps`` register steps
        (its quantum: the smallest positive energy it reported lately, 0.01 kWh x the
        multiplier; ``zero_expected_kwh`` while unknown), so that reading nothing is not chance;
        other meters with a few zero reads need ``zero_run_low``.
    zero_steps, quantum_drift
        See ``zero_run``; the quantum is the running minimum of positive energies, let grow by
        ``quantum_drift`` a valid interval so that it follows a changed multiplier.
    slack, threshold, cv_ref
        Drop CUSUM slack and decision threshold on the log deficit of the meter's shape-free
        consumption; the threshold grows with the standard deviation of that log above
        ``cv_ref`` (noisier meters need more evidence).
    young_slack, young_intervals
        Extra slack while the baseline is young: ``young_slack`` when it has just been learned,
        shrinking linearly to 0 at ``young_intervals`` learned intervals (a baseline of a day or
        two is itself off by one low or high day). Off by default: on the benchmark, where
        many thefts start on the second day, 0.1 costs more recall than it saves alerts.
    rise_slack, rise_threshold
        The same for the rise CUSUM.
    clip
        Bound on one interval's log ratio, in the CUSUMs and in the baseline's learning, so one
        interval (a zero, a spike: their own detectors) cannot open a level alarm alone.
    min_peers
        Meters of a peer group with fewer reporting peers (valid, with a learned baseline and no
        open drop / rise / zero / collapse alarm, the meter itself included) get no drop / rise
        test that interval: no other meter of its class to take the shape from (another
        class's shape would page on every weekend). 3: the median of three is not moved by one
        thief.
    collapse_groups, collapse_alpha, collapse_ratio, collapse_clear, collapse_hold
        ``collapse`` applies to meters of the peer groups ``collapse_groups`` (customer classes 1
        commercial and 2 industrial, as ``simulator.shapes`` numbers them; ``()`` turns it off).
        The meter's recent level is the EW mean of its energy with weight ``collapse_alpha``
        (1/64: the last 16 hours or so); ``collapse`` opens when that level falls below
        ``collapse_ratio`` of its usual level (the EW mean of energy, ``alpha``) and clears when it
        is back above ``collapse_clear`` of it. The usual level stops learning while the recent
        level is below ``collapse_hold`` of it, so a shutdown is judged against the level before
        it. After an abrupt shutdown to a few percent this opens after about a day (a little
        more after a slow ramp down). Not opened while a zero run or alarm is open (a meter
        reading nothing is the zero detector's case; its zeros do not count in the level), but
        an open collapse stays open through zero runs.

    Examples
    --------
    >>> det = MeterAnomalyDetector(capacity=2, warmup=4)
    >>> idx = np.array([0, 1])
    >>> ok = np.zeros(2, bool)
    >>> for _ in range(8):
    ...     _ = det.step(idx, np.array([1.0, 1.2]), ok, ~ok)
    >>> [(e.meter, e.type, e.score, e.firing)
    ...  for e in [det.step(idx, np.array([1.0, 0.0]), ok, ~ok) for _ in range(4)][-1]]
    [(1, 'zero', 4.0, True)]
    >>> [(e.type, e.firing) for e in det.step(idx, np.array([1.0, 1.1]), ok, ~ok)]
    [('zero', False)]
    >>> det.state_bytes_per_meter()
    50
    """

    def __init__(
        self,
        capacity: int = 1024,
        *,
        alpha: float = 0.005,
        share_alpha: float = 0.002,
        warmup: int = 96,
        zero_run: int = 4,
        zero_run_low: int = 16,
        zero_rate_max: float = 0.01,
        zero_rate_low_max: float = 0.1,
        zero_expected_kwh: float = 0.2,
        zero_steps: float = 4.0,
        quantum_drift: float = 0.001,
        spike_z: float = 8.0,
        spike_ratio: float = 10.0,
        spike_min_kwh: float = 0.1,
        slack: float = 0.34,
        threshold: float = 4.0,
        young_slack: float = 0.0,
        young_intervals: int = 480,
        rise_slack: float = 0.4,
        rise_threshold: float = 10.0,
        cv_ref: float = 0.3,
        clip: float = 0.8,
        min_peers: int = 3,
        flat_run: int = 16,
        flat_min_kwh: float = 0.1,
        missing_run: int = 4,
        outage_share: float = 0.5,
        collapse_groups: tuple[int, ...] = (1, 2),
        collapse_ratio: float = 0.2,
        collapse_clear: float = 0.5,
        collapse_hold: float = 0.8,
        collapse_alpha: float = 1 / 64,
    ) -> None:
        self.alpha, self.share_alpha = alpha, share_alpha
        self.warmup = warmup
        self.zero_run, self.zero_run_low = zero_run, zero_run_low
        self.zero_rate_max, self.zero_rate_low_max = zero_rate_max, zero_rate_low_max
        self.zero_expected_kwh = zero_expected_kwh
        self.zero_steps, self.quantum_drift = zero_steps, quantum_drift
        self.spike_z, self.spike_ratio, self.spike_min_kwh = spike_z, spike_ratio, spike_min_kwh
        self.slack, self.threshold, self.min_peers = slack, threshold, min_peers
        self.young_slack, self.young_intervals = young_slack, young_intervals
        self.cv_ref, self.clip = cv_ref, clip
        self.rise_slack, self.rise_threshold = rise_slack, rise_threshold
        self.flat_run, self.flat_min_kwh = flat_run, flat_min_kwh
        self.missing_run, self.outage_share = missing_run, outage_share
        self.collapse_groups = tuple(int(g) for g in collapse_groups)
        self.collapse_ratio, self.collapse_clear = collapse_ratio, collapse_clear
        self.collapse_hold = collapse_hold
        self.collapse_alpha = collapse_alpha
        self._a: dict[str, npt.NDArray[np.generic]] = new_columns(_STATE, capacity)

    # ---- state ------------------------------------------------------------------------------

    @staticmethod
    def state_bytes_per_meter() -> int:
        """Bytes of state per meter (sum of the array item sizes)."""
        return bytes_per_meter(_STATE)

    @property
    def capacity(self) -> int:
        return len(self._a["n"])

    def _grow(self, size: int) -> None:
        grow_columns(self._a, size)

    def snapshot(self) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of the state arrays (save with ``np.savez``)."""
        return {k: v.copy() for k, v in self._a.items()}

    def restore(self, snapshot: dict[str, npt.NDArray[np.generic]]) -> None:
        """Load state saved by :meth:`snapshot` (parameters come from the constructor)."""
        missing = set(_STATE) - set(snapshot)
        if missing:
            raise ValueError(f"snapshot lacks {sorted(missing)}")
        self._a = {k: np.asarray(snapshot[k], dtype=t).copy() for k, t in _STATE.items()}

    # ---- intervals of areas ----------------------------------------------------------------

    def step(
        self,
        meters: npt.NDArray[np.integer],
        energy: npt.NDArray[np.floating],
        backwards: npt.NDArray[np.bool_],
        active: npt.NDArray[np.bool_],
        group: npt.NDArray[np.integer] | None = None,
    ) -> list[MeterEvent]:
        """Learn one interval of one area and return the conditions that opened or cleared.

        ``meters`` are dense indices (unique within the call), ``energy`` interval kWh after the
        multiplier (NaN = missing), ``backwards`` the register went backwards, ``active`` the
        archive says the meter is in service, ``group`` an optional peer group per meter (e.g.
        customer class; ``None``: one group, code 0) whose current level is the reference of
        the shape-free consumption; meters of groups with fewer than ``min_peers`` reporting
        meters get no drop / rise test that interval.
        """
        m = np.asarray(meters, dtype=np.int64)
        return self.step_many(m, energy, backwards, active, group, np.array([0, len(m)]))[0]

    def step_many(
        self,
        meters: npt.NDArray[np.integer],
        energy: npt.NDArray[np.floating],
        backwards: npt.NDArray[np.bool_],
        active: npt.NDArray[np.bool_],
        group: npt.NDArray[np.integer] | None,
        bounds: npt.NDArray[np.integer],
    ) -> list[list[MeterEvent]]:
        """:meth:`step` for several area-intervals in one call: their arrays concatenated,
        area-interval ``j`` at ``[bounds[j], bounds[j + 1])``; the events of each. The same
        state and events as one :meth:`step` per area-interval in order, provided no meter
        is in two of them (peers and outages are judged per area-interval): the numpy work
        of a step is a fixed cost that one area's meters do not amortise."""
        m = np.asarray(meters, dtype=np.int64)
        cuts = np.asarray(bounds, dtype=np.int64)
        parts = len(cuts) - 1
        if m.size == 0:
            return [[] for _ in range(parts)]
        seg = np.repeat(np.arange(parts), np.diff(cuts))
        self._grow(int(m.max()) + 1)
        a = {k: v[m] for k, v in self._a.items()}
        e = np.asarray(energy, dtype=np.float64)
        back = np.asarray(backwards, dtype=bool) | (e < 0)
        act = np.asarray(active, dtype=bool)
        g = np.zeros(len(m), dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
        isnan = np.isnan(e)
        e0 = np.where(isnan, 0.0, e)
        nan = isnan & ~back
        valid = ~isnan & ~back & act
        ev = np.where(valid, e, 0.0)
        opened = a["open"].astype(np.uint16)
        was = {t: (opened & _BIT[t]) > 0 for t in ("zero", "drop", "rise", "missing", "collapse")}
        cond: dict[str, npt.NDArray[np.bool_]] = {}
        score: dict[str, npt.NDArray[np.float64]] = {}
        n = a["n"].astype(np.float64)
        ns = a["ns"].astype(np.float64)
        alpha = np.maximum(self.alpha, 1.0 / (n + 1.0))  # running mean while young
        mean, var = a["mean"].astype(np.float64), a["var"].astype(np.float64)

        # zero: runs of exact zeros; "normally consumes" from the meter's zero rate.
        is_zero = valid & (ev <= 0.0)
        zrun = np.where(valid, np.where(is_zero, a["zrun"].astype(np.int64) + 1, 0), a["zrun"])
        zrate = a["zrate"].astype(np.float64)
        need = np.where(
            zrate <= self.zero_rate_max,
            self.zero_run,
            np.where(zrate <= self.zero_rate_low_max, self.zero_run_low, np.iinfo(np.uint16).max),
        )
        cond["zero"] = (zrun >= need) & (n >= min(self.warmup, self.zero_run_low))
        score["zero"] = zrun.astype(np.float64)

        # spike against own EW mean / variance.
        sd = np.sqrt(np.maximum(var, 1e-12))
        z = (ev - mean) / sd
        spike = (
            valid
            & (n >= self.warmup)
            & (z > self.spike_z)
            & (ev > self.spike_ratio * mean)
            & (ev - mean > self.spike_min_kwh)
        )
        cond["spike"], score["spike"] = spike, z

        # Shape-free consumption r = energy / the peers' current level, and its log baseline b.
        mature = ns >= self.warmup
        bl = a["lshare"].astype(np.float64)
        # Peers under an open level, zero or collapse alarm are not peers: their frozen baseline
        # would pull the level down (an area of many thieves).
        alarmed = was["drop"] | was["rise"] | was["zero"] | was["collapse"]
        # Peer groups are per area-interval.
        peer = seg * (int(g.max()) - int(g.min()) + 1) + (g - g.min()) if parts > 1 else g
        ref, by_baseline = self._reference(ev, mean, bl, valid & ~alarmed, mature, peer)
        # A meter whose baseline was learned against the peers' baselines is judged (and keeps
        # learning) only against them; the fallback (peers' EW mean) only teaches young meters.
        share_ok = valid & (ref > 0) & (by_baseline | ~mature)
        r = np.where(share_ok, ev / np.where(ref > 0, ref, 1.0), 0.0)
        bvar = a["lshare_var"].astype(np.float64)
        lsd = np.sqrt(np.maximum(bvar, 0.0))
        h = self.threshold * np.maximum(1.0, lsd / self.cv_ref)  # noisier meters need more evidence
        dev = np.clip(np.log(np.maximum(r, 1e-12)) - bl, -self.clip, self.clip)
        learn_cusum = share_ok & mature
        # "Normally consumes" can also mean now: its usual share of what its peers use, over the
        # run, is several register steps, so zeros in a row are not chance.
        expected = np.where((ns > 0) & (by_baseline | ~mature), np.exp(bl) * ref, 0.0)
        quantum = a["quantum"].astype(np.float64)
        run_kwh = np.where(quantum > 0, self.zero_steps * quantum, self.zero_expected_kwh)
        cond["zero"] |= (zrun >= self.zero_run) & (zrun * expected >= run_kwh) & (n >= self.warmup)
        young = self.young_slack * np.clip(1.0 - (ns - self.warmup) / self.young_intervals, 0.0, 1.0)
        lo0, hi0 = a["cus_lo"].astype(np.float64), a["cus_hi"].astype(np.float64)
        lo = np.where(learn_cusum, np.maximum(0.0, lo0 - dev - self.slack - young), lo0)
        hi = np.where(learn_cusum, np.maximum(0.0, hi0 + dev - self.rise_slack - young), hi0)
        h_hi = h * self.rise_threshold / self.threshold
        lo, hi = np.minimum(lo, 2 * h), np.minimum(hi, 2 * h_hi)  # a cleared level closes soon
        cond["drop"] = np.where(was["drop"], lo > 0, lo >= h)
        cond["rise"] = np.where(was["rise"], hi > 0, hi >= h_hi)
        score["drop"], score["rise"] = lo / h, hi / h_hi

        # flat line: the same non-zero energy again and again.
        same = valid & (ev >= self.flat_min_kwh) & (np.abs(ev - a["last"]) <= 1e-6 * np.maximum(ev, 1.0))
        frun = np.where(valid, np.where(same, a["frun"].astype(np.int64) + 1, 0), a["frun"])
        cond["flat_line"] = frun + 1 >= self.flat_run
        score["flat_line"] = frun + 1.0

        cond["rollback"] = back
        score["rollback"] = np.where(isnan, 1.0, -e0)
        cond["inactive_consumption"] = ~act & (e0 > 0)
        score["inactive_consumption"] = e0

        # missing: frozen while most of the area is missing (collection outage, not the meter).
        if parts == 1:
            outage: np.bool_ | npt.NDArray[np.bool_] = nan.sum() > self.outage_share * len(m)
        else:
            outage = (np.bincount(seg, weights=nan, minlength=parts) > self.outage_share * np.diff(cuts))[seg]
        mrun0 = a["mrun"].astype(np.int64)
        mrun = np.where(outage, mrun0, np.where(nan, mrun0 + 1, 0))
        cond["missing"] = np.where(outage, was["missing"], mrun >= self.missing_run)
        score["missing"] = mrun.astype(np.float64)

        # collapse: the energy of the last hours (EW) against the usual level (EW mean), large
        # customers only. A zero run is the zero detector's: it does not count in the level (a
        # stopped meter that resumes must not look collapsed).
        zero_now = was["zero"] | cond["zero"] | (zrun >= self.zero_run)
        big = np.zeros(len(m), dtype=bool)
        for k in self.collapse_groups:
            big |= g == k
        level = a["level"].astype(np.float64)
        alc = np.where(valid & ~zero_now, np.maximum(self.collapse_alpha, 1.0 / (n + 1.0)), 0.0)
        level = level + alc * (ev - level)
        ratio = level / np.maximum(mean, 1e-12)
        # An open collapse stays open through zero runs (a shut plant's residual is a few
        # register steps of a CT meter: some intervals read nothing).
        collapse = big & (n >= self.warmup) & (mean > 0)
        cond["collapse"] = collapse & np.where(
            was["collapse"], ratio < self.collapse_clear, (ratio < self.collapse_ratio) & ~zero_now
        )
        score["collapse"] = np.clip(1.0 - ratio, 0.0, 1.0)

        # learning: baselines frozen while a level, zero or collapse alarm is open (a stopped
        # meter must not teach itself that zero is normal, a thief that his theft is). The energy
        # mean keeps learning through a rise, where a spike is learned capped at the spike bound,
        # so a real step up is absorbed instead of paging every evening. A large customer's
        # usual level is also frozen while its recent level is below collapse_hold of it, so a
        # shutdown is judged against the level before it.
        deficit = was["drop"] | cond["drop"] | zero_now | was["collapse"] | cond["collapse"]
        frozen = deficit | was["rise"] | cond["rise"]
        suspect = big & (ratio < self.collapse_hold) & (n >= self.warmup)
        learn = valid & ~deficit & ~suspect
        al = np.where(learn, alpha, 0.0)
        d = np.where(spike, self.spike_z * sd, ev - mean)
        new_mean = mean + al * d
        new_var = (1 - al) * (var + al * d * d)
        # The baseline is a robust (clipped) EW mean of log r: the median-like centre that the
        # peers' level (a median) is built from, so the reference keeps its scale.
        learn_share = share_ok & ~spike & ~frozen & ((ns > 0) | (r > 0))
        als = np.where(learn_share, np.maximum(self.share_alpha, 1.0 / (ns + 1.0)), 0.0)
        ds = np.where(ns > 0, dev, np.log(np.maximum(r, 1e-12)))
        new_bl = bl + als * ds
        new_bvar = np.where(ns > 0, (1 - als) * (bvar + als * ds * ds), 0.0)
        # A zero run is learned when it ends (and only if it raised nothing), so the run being
        # judged never teaches the meter that zeros are normal.
        ended = valid & ~is_zero & ~was["zero"]
        keep = np.where(ended, (1 - alpha) ** a["zrun"].astype(np.float64), 1.0)
        new_zrate = 1 - (1 - zrate) * keep
        alz = np.where(ended, alpha, 0.0)
        new_zrate = new_zrate * (1 - alz)

        bits = np.zeros(len(m), dtype=np.uint16)
        for t in TYPES:
            bits |= np.where(cond[t], _BIT[t], np.uint16(0))

        u16 = np.iinfo(np.uint16).max
        upd = self._a
        upd["n"][m] = np.minimum(n + valid, u16)
        upd["ns"][m] = np.minimum(ns + (als > 0), u16)
        upd["mean"][m], upd["var"][m] = new_mean, new_var
        upd["lshare"][m], upd["lshare_var"][m] = new_bl, new_bvar
        upd["zrate"][m] = new_zrate
        upd["cus_lo"][m], upd["cus_hi"][m] = lo, hi
        upd["last"][m] = np.where(valid, ev, a["last"])
        pos = valid & (ev > 0)
        drift = np.where(quantum > 0, quantum * (1.0 + self.quantum_drift), np.inf)
        upd["quantum"][m] = np.where(pos, np.minimum(ev, drift), quantum)
        upd["level"][m] = level
        upd["zrun"][m] = np.minimum(zrun, u16)
        upd["frun"][m] = np.minimum(frun, u16)
        upd["mrun"][m] = np.minimum(mrun, u16)
        upd["open"][m] = bits

        changed = np.flatnonzero(bits != opened)
        out: list[list[MeterEvent]] = [[] for _ in range(parts)]
        for i in changed:
            events = out[seg[i]]
            for t in TYPES:
                now, before = bool(bits[i] & _BIT[t]), bool(opened[i] & _BIT[t])
                if now == before:
                    continue
                evidence = {
                    "energy_kwh": float(e[i]),
                    "mean_kwh": round(float(mean[i]), 6),
                    "share": round(float(r[i]), 6),
                    "share_baseline": round(float(np.exp(bl[i])) if ns[i] > 0 else 0.0, 6),
                }
                if t == "zero":
                    evidence = {"run": float(zrun[i]), "mean_kwh": round(float(mean[i]), 6)}
                elif t == "collapse":
                    evidence = {
                        "energy_kwh": float(e[i]),
                        "day_level_kwh": round(float(level[i]), 6),
                        "mean_kwh": round(float(mean[i]), 6),
                        "ratio": round(float(ratio[i]), 6),
                    }
                events.append(MeterEvent(int(m[i]), t, round(float(score[t][i]), 6), now, evidence))
        return out

    def _reference(
        self,
        ev: npt.NDArray[np.float64],
        mean: npt.NDArray[np.float64],
        lshare: npt.NDArray[np.float64],
        valid: npt.NDArray[np.bool_],
        mature: npt.NDArray[np.bool_],
        g: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Peers' current level per meter, and whether it came from the peers' baselines.

        The level is the median over the meter's group of energy / exp(baseline) of the peers
        with a learned baseline: shape and weather cancel, and neither a thief nor one big
        meter moves a median. Because every baseline is a median-like centre of energy over
        that same level, the level keeps its scale (an EW *mean* of energy would make the
        level drift by the noise's mean / median ratio). While fewer than ``min_peers`` peers
        have a baseline (the first day), the fallback is the median of energy over each peer's
        EW mean, for learning only. A meter whose group is too small gets 0: no shape to
        compare with (another class's shape would page on every weekend), no level test.
        """
        if g.size == 0 or bool((g == g[0]).all()):  # one group (one area of one class): no sort
            key, groups = np.zeros(len(g), dtype=np.int64), 1
        else:
            codes, key = np.unique(g, return_inverse=True)
            groups = len(codes)
        peers = self.min_peers
        med_b, has_b = _group_medians(ev / np.exp(lshare), key, valid & mature, groups, peers)
        by_baseline = has_b[key]
        if has_b.all():  # the usual case: the fallback is not needed
            return med_b[key], by_baseline
        per_mean = ev / np.where(mean > 0, mean, 1.0)
        med_m, has_m = _group_medians(per_mean, key, valid & (mean > 0), groups, peers)
        out = np.where(by_baseline, med_b[key], np.where(has_m[key], med_m[key], 0.0))
        return out, by_baseline


_FEW_GROUPS = 4  # peer groups below which _group_medians partitions each instead of sorting


def _group_medians(
    x: npt.NDArray[np.float64],
    key: npt.NDArray[np.int64],
    peers: npt.NDArray[np.bool_],
    groups: int,
    min_peers: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per group ``0 .. groups - 1``: the median of ``x`` over its ``peers``, and whether it
    has at least ``min_peers`` of them (else its median is 0). One sort for every group; the
    same values as a median of each group's peers on its own (the mean of the middle two when
    even).

    >>> med, ok = _group_medians(np.array([3.0, 1.0, 2.0, 9.0, 4.0, 7.0]), np.array([0, 0, 0, 1, 1, 1]),
    ...                          np.array([True, True, True, False, True, True]), 2, 2)
    >>> med.tolist(), ok.tolist()
    ([2.0, 5.5], [True, True])
    """
    k, v = key[peers], x[peers]
    if groups <= _FEW_GROUPS:  # a partition per group costs less than one sort of all
        med, ok = np.zeros(groups), np.zeros(groups, dtype=bool)
        for j in range(groups):
            vj = v if groups == 1 else v[k == j]
            size = len(vj)
            if size >= max(min_peers, 1):
                mid = size // 2
                part = np.partition(vj, mid)
                med[j] = part[mid] if size % 2 else (part[:mid].max() + part[mid]) / 2
                ok[j] = True
        return med, ok
    count = np.bincount(k, minlength=groups)
    ok = count >= min_peers
    order = np.lexsort((v, k))
    v = v[order]
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    half = count // 2
    upper = v[np.minimum(start + half, len(v) - 1)] if len(v) else np.zeros(groups)
    lower = v[np.maximum(start + half - 1, 0)] if len(v) else np.zeros(groups)
    med = np.where(count % 2 == 1, upper, (lower + upper) / 2)
    return np.where(ok, med, 0.0), ok
