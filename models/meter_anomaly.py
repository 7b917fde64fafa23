"""Per-meter consumption anomalies, vectorised over dense meter indices.

One :class:`MeterAnomalyDetector` serves millions of meters: its state is a handful of numpy
arrays indexed by a dense meter index the caller assigns (meter id -> int), about 40 bytes a
meter, instead of one Python (or river) object per meter. A step is one interval of one area.

What it scores (the event ``score``; higher = more anomalous):

* ``zero``: run of zero intervals on a meter that normally consumes (score = run length).
* ``spike``: an interval far above the meter's own exponentially weighted mean / variance
  (score = z).
* ``drop`` / ``rise``: sustained change of the meter's consumption relative to its peers'
  current level (median of their energy over their own mean, in the same interval, so the daily
  load shape and the weather cancel): one-sided CUSUMs of the clipped log ratio to the meter's
  baseline, with a slack; baselines are frozen while the alarm is open (score = CUSUM / threshold).
* ``flat_line``: identical non-zero interval energies (a stuck register or repeated value).
* ``rollback``: register went backwards, or negative interval energy.
* ``inactive_consumption``: energy on a meter flagged inactive.
* ``missing``: run of missing intervals (not counted while most of the area is missing: that is
  a collection outage, see :mod:`models.area_anomaly`).

Events are emitted on transitions only: ``firing=True`` when a condition opens, ``firing=False``
when it clears, so the work and output scale with anomalies, not with their duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

TYPES = ("zero", "spike", "drop", "rise", "flat_line", "rollback", "inactive_consumption", "missing")
_BIT = {t: np.uint8(1 << i) for i, t in enumerate(TYPES)}

F32 = np.float32
# name -> dtype of the per-meter state arrays (snapshot keys)
_STATE: dict[str, type[np.generic]] = {
    "n": np.uint16,  # valid intervals seen (saturates)
    "mean": F32,  # EW mean of interval energy (kWh)
    "var": F32,  # EW variance of interval energy
    "share": F32,  # EW mean of energy / peers' current level (shape-free consumption)
    "share_var": F32,  # EW variance of that share
    "zrate": F32,  # EW rate of zero intervals
    "cus_lo": F32,  # drop CUSUM
    "cus_hi": F32,  # rise CUSUM
    "last": F32,  # last valid energy (flat-line test)
    "zrun": np.uint16,  # consecutive zero intervals
    "frun": np.uint16,  # consecutive repeats of the same non-zero energy
    "mrun": np.uint16,  # consecutive missing intervals
    "open": np.uint8,  # bit per TYPES entry: condition currently open
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
    alpha, share_alpha
        Weight of a new interval in the EW mean / variance of energy (about 1 / (2 days)) and
        in the baseline of the shape-free consumption.
    warmup
        Valid intervals a meter needs before drop, rise and spike can fire.
    zero_run
        Consecutive zero intervals that raise ``zero`` on a meter that practically never reads
        zero (``zrate <= zero_rate_max``) or whose expected energy in the interval (its usual
        share of its peers' current level) is at least ``zero_expected_kwh``; other meters with
        a few zero reads need ``zero_run_low``.
    slack, threshold, cv_ref
        CUSUM slack and decision threshold on the relative deficit (excess) of the meter's
        shape-free consumption; the threshold grows with the meter's coefficient of variation
        above ``cv_ref``.

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
    41
    """

    def __init__(
        self,
        capacity: int = 1024,
        *,
        alpha: float = 0.005,
        share_alpha: float = 0.005,
        warmup: int = 96,
        zero_run: int = 4,
        zero_run_low: int = 16,
        zero_rate_max: float = 0.01,
        zero_rate_low_max: float = 0.1,
        zero_expected_kwh: float = 0.05,
        spike_z: float = 8.0,
        spike_ratio: float = 10.0,
        spike_min_kwh: float = 0.1,
        slack: float = 0.3,
        threshold: float = 5.0,
        rise_slack: float = 0.4,
        rise_threshold: float = 10.0,
        cv_ref: float = 0.3,
        clip: float = 0.8,
        min_peers: int = 5,
        flat_run: int = 16,
        flat_min_kwh: float = 0.1,
        missing_run: int = 4,
        outage_share: float = 0.5,
    ) -> None:
        self.alpha, self.share_alpha = alpha, share_alpha
        self.warmup = warmup
        self.zero_run, self.zero_run_low = zero_run, zero_run_low
        self.zero_rate_max, self.zero_rate_low_max = zero_rate_max, zero_rate_low_max
        self.zero_expected_kwh = zero_expected_kwh
        self.spike_z, self.spike_ratio, self.spike_min_kwh = spike_z, spike_ratio, spike_min_kwh
        self.slack, self.threshold, self.min_peers = slack, threshold, min_peers
        self.cv_ref, self.clip = cv_ref, clip
        self.rise_slack, self.rise_threshold = rise_slack, rise_threshold
        self.flat_run, self.flat_min_kwh = flat_run, flat_min_kwh
        self.missing_run, self.outage_share = missing_run, outage_share
        self._a: dict[str, npt.NDArray[np.generic]] = {
            k: np.zeros(max(1, capacity), dtype=t) for k, t in _STATE.items()
        }

    # ---- state ------------------------------------------------------------------------------

    @staticmethod
    def state_bytes_per_meter() -> int:
        """Bytes of state per meter (sum of the array item sizes)."""
        return sum(np.dtype(t).itemsize for t in _STATE.values())

    @property
    def capacity(self) -> int:
        return len(self._a["n"])

    def _grow(self, size: int) -> None:
        cap = self.capacity
        if size <= cap:
            return
        while cap < size:
            cap *= 2
        for k, arr in self._a.items():
            new = np.zeros(cap, dtype=arr.dtype)
            new[: len(arr)] = arr
            self._a[k] = new

    def snapshot(self) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of the state arrays (save with ``np.savez``)."""
        return {k: v.copy() for k, v in self._a.items()}

    def restore(self, snapshot: dict[str, npt.NDArray[np.generic]]) -> None:
        """Load state saved by :meth:`snapshot` (parameters come from the constructor)."""
        missing = set(_STATE) - set(snapshot)
        if missing:
            raise ValueError(f"snapshot lacks {sorted(missing)}")
        self._a = {k: np.asarray(snapshot[k], dtype=t).copy() for k, t in _STATE.items()}

    # ---- one interval of one area -------------------------------------------------------------

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
        customer class) whose current level is the reference of the share; meters of groups
        with fewer than ``min_peers`` reporting meters get no drop / rise test that interval.
        """
        m = np.asarray(meters, dtype=np.int64)
        if m.size == 0:
            return []
        self._grow(int(m.max()) + 1)
        a = {k: v[m] for k, v in self._a.items()}
        e = np.asarray(energy, dtype=np.float64)
        back = np.asarray(backwards, dtype=bool) | (e < 0)
        act = np.asarray(active, dtype=bool)
        nan = np.isnan(e) & ~back
        valid = ~np.isnan(e) & ~back & act
        ev = np.where(valid, e, 0.0)
        opened = a["open"].astype(np.uint8)
        cond: dict[str, npt.NDArray[np.bool_]] = {}
        score: dict[str, npt.NDArray[np.float64]] = {}
        n = a["n"].astype(np.float64)
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

        # Shape-free consumption: energy over the peers' current level (median of their energy
        # over their own mean), so the load shape and the weather cancel; a thief or a big
        # meter does not move a median.
        ref = self._reference(ev, mean, valid, group)
        share_ok = valid & (ref > 0)  # ref is 0 where a meter has too few peers to compare with
        r = np.where(share_ok, ev / np.where(ref > 0, ref, 1.0), 0.0)
        b = a["share"].astype(np.float64)
        bvar = a["share_var"].astype(np.float64)
        cv = np.sqrt(np.maximum(bvar, 0.0)) / np.maximum(b, 1e-9)
        h = self.threshold * np.maximum(1.0, cv / self.cv_ref)  # noisier meters need more evidence
        rel = np.where(b > 0, r / np.where(b > 0, b, 1.0), 1.0)
        learn_cusum = share_ok & (n >= self.warmup) & (b > 0)
        # "Normally consumes" can also mean now: its usual share of what its peers use in this
        # interval is several register steps, so zeros in a row are not chance.
        expected = b * ref
        cond["zero"] |= (zrun >= self.zero_run) & (expected >= self.zero_expected_kwh) & (n >= self.warmup)
        # log ratio: symmetric for multiplicative noise; clipped so one interval (a zero, a
        # spike: their own detectors) cannot open a level alarm alone.
        lr = np.clip(np.log(np.maximum(rel, 1e-6)), -self.clip, self.clip)
        lo = np.where(learn_cusum, np.maximum(0.0, a["cus_lo"] - lr - self.slack), a["cus_lo"])
        hi = np.where(learn_cusum, np.maximum(0.0, a["cus_hi"] + lr - self.rise_slack), a["cus_hi"])
        h_hi = h * self.rise_threshold / self.threshold
        lo, hi = np.minimum(lo, 2 * h), np.minimum(hi, 2 * h_hi)  # a cleared level closes soon
        drop_open = (opened & _BIT["drop"]) > 0
        rise_open = (opened & _BIT["rise"]) > 0
        cond["drop"] = np.where(drop_open, lo > 0, lo >= h)
        cond["rise"] = np.where(rise_open, hi > 0, hi >= h_hi)
        score["drop"], score["rise"] = lo / h, hi / h_hi

        # flat line: the same non-zero energy again and again.
        same = valid & (ev >= self.flat_min_kwh) & (np.abs(ev - a["last"]) <= 1e-6 * np.maximum(ev, 1.0))
        frun = np.where(valid, np.where(same, a["frun"].astype(np.int64) + 1, 0), a["frun"])
        cond["flat_line"] = frun + 1 >= self.flat_run
        score["flat_line"] = frun + 1.0

        cond["rollback"] = back
        score["rollback"] = np.where(np.isnan(e), 1.0, -np.nan_to_num(e))
        cond["inactive_consumption"] = ~act & (np.nan_to_num(e) > 0)
        score["inactive_consumption"] = np.nan_to_num(e)

        # missing: frozen while most of the area is missing (collection outage, not the meter).
        outage = nan.sum() > self.outage_share * len(m)
        mrun = a["mrun"].astype(np.int64) if outage else np.where(nan, a["mrun"].astype(np.int64) + 1, 0)
        miss_open = (opened & _BIT["missing"]) > 0
        cond["missing"] = miss_open if outage else mrun >= self.missing_run
        score["missing"] = mrun.astype(np.float64)

        # learning: baselines frozen while a level or zero alarm is open (a stopped meter must
        # not teach itself that zero is normal); a spike is learned capped at the spike bound, so
        # a real step up is absorbed instead of paging every interval.
        zero_now = ((opened & _BIT["zero"]) > 0) | cond["zero"] | (zrun >= self.zero_run)
        frozen = drop_open | rise_open | cond["drop"] | cond["rise"] | zero_now
        learn = valid & ~frozen
        al = np.where(learn, alpha, 0.0)
        d = np.where(spike, self.spike_z * sd, ev - mean)
        new_mean = mean + al * d
        new_var = (1 - al) * (var + al * d * d)
        learn_share = share_ok & ~spike & ~frozen
        als = np.where(learn_share, np.maximum(self.share_alpha, 1.0 / (n + 1.0)), 0.0)
        ds = r - b
        new_b = b + als * ds
        new_bvar = (1 - als) * (bvar + als * ds * ds)
        # A zero run is learned when it ends (and only if it raised nothing), so the run being
        # judged never teaches the meter that zeros are normal.
        zero_open = (opened & _BIT["zero"]) > 0
        ended = valid & ~is_zero & ~zero_open
        keep = np.where(ended, (1 - alpha) ** a["zrun"].astype(np.float64), 1.0)
        new_zrate = 1 - (1 - zrate) * keep
        alz = np.where(ended, alpha, 0.0)
        new_zrate = new_zrate * (1 - alz)

        bits = np.zeros(len(m), dtype=np.uint8)
        for t in TYPES:
            bits |= np.where(cond[t], _BIT[t], np.uint8(0))

        u16 = np.iinfo(np.uint16).max
        upd = self._a
        upd["n"][m] = np.minimum(n + valid, u16)
        upd["mean"][m], upd["var"][m] = new_mean, new_var
        upd["share"][m], upd["share_var"][m] = new_b, new_bvar
        upd["zrate"][m] = new_zrate
        upd["cus_lo"][m], upd["cus_hi"][m] = lo, hi
        upd["last"][m] = np.where(valid, ev, a["last"])
        upd["zrun"][m] = np.minimum(zrun, u16)
        upd["frun"][m] = np.minimum(frun, u16)
        upd["mrun"][m] = np.minimum(mrun, u16)
        upd["open"][m] = bits

        changed = np.flatnonzero(bits != opened)
        events: list[MeterEvent] = []
        for i in changed:
            for t in TYPES:
                now, before = bool(bits[i] & _BIT[t]), bool(opened[i] & _BIT[t])
                if now == before:
                    continue
                evidence = {
                    "energy_kwh": float(e[i]),
                    "mean_kwh": round(float(mean[i]), 6),
                    "share": round(float(r[i]), 6),
                    "share_baseline": round(float(b[i]), 6),
                }
                if t == "zero":
                    evidence = {"run": float(zrun[i]), "mean_kwh": round(float(mean[i]), 6)}
                events.append(MeterEvent(int(m[i]), t, round(float(score[t][i]), 6), now, evidence))
        return events

    def _reference(
        self,
        ev: npt.NDArray[np.float64],
        mean: npt.NDArray[np.float64],
        valid: npt.NDArray[np.bool_],
        group: npt.NDArray[np.integer] | None,
    ) -> npt.NDArray[np.float64]:
        """Peers' current level (median of energy / own mean), per meter."""
        ok = valid & (mean > 0)
        level = np.where(ok, ev / np.where(mean > 0, mean, 1.0), np.nan)
        if group is None:
            g = np.zeros(len(ev), dtype=np.int64)
        else:
            g = np.asarray(group, dtype=np.int64)
        # A meter whose group is too small has no shape to compare with (another class's shape
        # would page on every weekend): no reference, no level test.
        out = np.zeros(len(ev))
        for k in np.unique(g):
            sel = g == k
            peers = ok & sel
            if peers.sum() >= self.min_peers:
                out[sel] = float(np.median(level[peers]))
        return out
