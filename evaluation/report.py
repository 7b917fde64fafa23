"""The detection report of an evaluation (``gridwatch evaluate`` and
benchmarks/evaluate_detection.py): the targets measured, met or missed; a plain-text summary; and
one HTML page with inline SVG charts (axes, labels, target lines; no network, no plotting library).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# What is aimed at (docs/detection.md, docs/suspects.md); measured_bars() says met or missed.
BARS = {
    "h1-h4 (>= 30% taken): recall within 1 day": ">= 0.90",
    "h1-h4: precision": ">= 0.90",
    "stopped / zero: recall within 4 intervals": ">= 0.99",
    "paged false meter alerts per 1,000 meter-days": "<= 1",
    "state bytes per meter": "<= 64",
    "suspects: top-10 hit rate of loss-moving labels at the last checkpoint": ">= 0.90",
    "suspects: AUC of the final ranking": ">= 0.95",
}


def measured_bars(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it is met (None: nothing to judge it
    on, e.g. no label of the type was scored). h5 / h6 have no target."""
    by = res["by_type"]

    def get(t: str, *keys: str) -> float | None:
        v: Any = by.get(t, {})
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return None if v is None else float(v)

    rows: list[dict[str, Any]] = []

    def bar(name: str, value: float | None, ok: bool | None, note: str = "") -> None:
        rows.append({"bar": name, "measured": value, "met": ok, "note": note})

    for t in ("theft_h1", "theft_h2", "theft_h3", "theft_h4"):
        keys = ("share_ge_0.3", "recall_within_bar") if t == "theft_h1" else ("recall_within_bar",)
        v = get(t, *keys)
        bar(
            f"{t} recall within 1 day (>= 0.90)",
            v,
            None if v is None else v >= 0.9,
            "share >= 0.3 only" if t == "theft_h1" else "",
        )
        p = get(t, "precision")
        bar(
            f"{t} precision (>= 0.90)",
            p,
            None if p is None else p >= 0.9,
            "drop + zero alerts" if t == "theft_h2" else "drop alerts",
        )
    v = get("stopped", "recall_within_bar")
    bar("stopped recall within 4 intervals (>= 0.99)", v, None if v is None else v >= 0.99)
    v = get("stopped", "outside_outages", "recall_within_bar")
    bar(
        "  the same outside concentrator outages",
        v,
        None if v is None else v >= 0.99,
        "zeros held back by the concentrator cannot be judged in time",
    )
    split = res.get("false_meter_alerts_per_1000_meter_days")
    paged = float(split["paged"]) if split else float(res["false_alerts_per_1000_meter_days"])
    bar(
        "paged false meter alerts per 1,000 meter-days (<= 1)", paged, paged <= 1.0, "severity page / warning"
    )
    if split:
        bar(
            "  information false meter alerts per 1,000 meter-days",
            float(split["information"]),
            None,
            "severity info: no target, they page nobody",
        )
    b = float(res["state_bytes_per_meter"])
    bar("state bytes per meter (<= 64)", b, b <= 64, "meter detector + Detection's last register")
    sus = res.get("suspects")
    if sus:
        loss = sus["all_loss"]
        last = loss["at_day"][max(loss["at_day"], key=float)] if loss["at_day"] else {}
        v = last.get("top10")
        day = max(sus["days"]) if sus["days"] else 0
        bar(
            f"suspects: top-10 hit rate of loss-moving labels at day {day:g} (>= 0.90)",
            v,
            None if v is None else v >= 0.9,
            f"{last.get('scored', 0)} labels",
        )
        a = loss["auc"]
        bar(
            "suspects: AUC of the final ranking (>= 0.95)",
            a,
            None if a is None else a >= 0.95,
            f"labelled meters against {sus['honest_meters']:,} without a label",
        )
    return rows


def status(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "missed")


# ---- text ----------------------------------------------------------------------------------------


def summary_lines(res: dict[str, Any]) -> list[str]:
    """The printed summary: per label type, the targets (measured, met / missed), false alerts,
    late readings and the suspect ranking."""
    lines = [
        f"{'type':<26}{'labels':>7}{'scored':>7}{'found':>7}{'prec':>7}{'recall':>7}{'f1':>7}{'delay':>7}",
    ]
    for name, e in sorted(res["by_type"].items()):
        cells = "".join(
            f"{_f(v, 2, '-'):>7}" for v in (e["precision"], e["recall"], e["f1"], e["median_delay_intervals"])
        )
        lines.append(f"{name:<26}{e['labels']:>7}{e['scored']:>7}{e['detected']:>7}{cells}")
    if not res["by_type"]:
        lines.append("(no labels of a scored type)")
    if any(e["scored"] < e["labels"] for e in res["by_type"].values()):
        lines.append(
            "scored < labels: the label began before the detectors had a baseline (warm-up), or in "
            "the run's last day and lasted to its end"
        )
    lines += ["", f"{'target':<72}{'measured':>9}  status"]
    for b in res["bars_measured"]:
        lines.append(f"{b['bar']:<72}{_f(b['measured'], 3, 'n/a'):>9}  {status(b['met'])}")
    split = res["false_meter_alerts_per_1000_meter_days"]
    lines += [
        "",
        f"false meter alerts per 1,000 meter-days: paged {split['paged']:.2f}, information "
        f"{split['information']:.2f} ({_by_type(res['false_alerts_by_type'])})",
        f"false area alerts: {res['false_area_alerts']} "
        f"({res['false_area_alerts_per_1000_area_days']:.2f} per 1,000 area-days)",
    ]
    if "late_readings" in res:
        lines.append(f"late readings (beyond the allowed lateness, refused): {_late(res)}")
    sus = res.get("suspects")
    if sus:
        days = [f"{d:g}" for d in sus["days"]]
        head = "".join(f"{'day ' + d + ' top 3/5/10':>22}" for d in days)
        lines += [
            "",
            "suspect ranking: share of labels whose meter is in its area's top k",
            f"{'type':<26}{head}{'AUC':>7}",
        ]
        rows = [*sorted(sus["by_type"].items()), ("all loss-moving", sus["all_loss"])]
        for name, e in rows:
            cells = "".join(
                f"{' '.join(_f(e['at_day'][d].get(f'top{k}'), 2, '-') for k in sus['top_k']):>22}"
                for d in days
            )
            lines.append(f"{name:<26}{cells}{_f(e['auc'], 2, '-'):>7}")
        lines.append(
            f"suspect alerts opened: {sus['suspect_alerts_opened']}; ranker state "
            f"{sus['state_bytes_per_meter']} bytes/meter"
        )
    return lines


@contextmanager
def progress_bar(
    enabled: bool, source: Path, count: Callable[[Path], int]
) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar over a readings file's records, on stderr; yields the callback that
    sets the records done (None when off)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("evaluate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("records", total=count(source))
        yield lambda n: bar.update(task, completed=n)


def _late(res: dict[str, Any]) -> str:
    other = {k: v for k, v in res["refused"].items() if k != "late"}
    return f"{res['late_readings']:,}; other refusals: {_by_type(other)}"


def _by_type(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


# ---- charts --------------------------------------------------------------------------------------


def bar_chart(
    title: str,
    rows: list[tuple[str, float | None]],
    *,
    vmax: float,
    axis: str,
    fmt: str = "{:.2f}",
    target: float | None = None,
    target_label: str = "",
) -> str:
    """A horizontal bar chart: one bar per row (n/a for None), an x axis with ticks and a title,
    and a dashed target line."""
    w, row_h, left, right = 640, 18, 200, 580
    vmax = _nice(vmax)
    top = 44
    axis_y = top + row_h * len(rows) + 4
    h = axis_y + 42
    span = right - left

    def x(v: float) -> float:
        return left + span * min(max(v, 0.0), vmax) / vmax

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="{html.escape(title)}" class="chart">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (name, v) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="4" y="{y + 12}" font-size="11">{html.escape(name)}</text>')
        if v is None:
            parts.append(f'<text x="{left + 4}" y="{y + 12}" font-size="11" fill="#888">n/a</text>')
            continue
        bw = max(1.0, x(v) - left)
        parts.append(
            f'<rect class="bar" x="{left}" y="{y + 2}" width="{bw:.1f}" height="{row_h - 5}" fill="#4a7bb7"/>'
        )
        label_x = left + bw + 4
        parts.append(f'<text x="{label_x:.1f}" y="{y + 12}" font-size="11">{fmt.format(v)}</text>')
    # axes: the value axis with 5 ticks, the category axis on the left
    parts.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{axis_y}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="#333"/>')
    for k in range(5):
        v = vmax * k / 4
        tx = x(v)
        parts.append(f'<line x1="{tx:.1f}" y1="{axis_y}" x2="{tx:.1f}" y2="{axis_y + 4}" stroke="#333"/>')
        parts.append(
            f'<text x="{tx:.1f}" y="{axis_y + 16}" font-size="10" text-anchor="middle">{fmt.format(v)}</text>'
        )
    parts.append(
        f'<text x="{left + span / 2:.1f}" y="{axis_y + 34}" font-size="11" text-anchor="middle">'
        f"{html.escape(axis)}</text>"
    )
    if target is not None:
        tx = x(target)
        parts.append(
            f'<line class="target" x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{axis_y}" '
            'stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5,3"/>'
        )
        anchor = "end" if tx > left + span / 2 else "start"
        dx = -3 if anchor == "end" else 3
        parts.append(
            f'<text x="{tx + dx:.1f}" y="{top - 8}" font-size="10" fill="#c0392b" text-anchor="{anchor}">'
            f"{html.escape(target_label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice(v: float) -> float:
    """The axis end at or above ``v`` whose quarter ticks are round numbers.

    >>> _nice(1.0), _nice(105.6), _nice(1.2)
    (1.0, 120.0, 1.2)
    """
    step = v / 4
    scale = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * scale >= step * (1 - 1e-9):
            return float(f"{4 * m * scale:.6g}")
    return v


def charts(res: dict[str, Any]) -> list[str]:
    """Recall, precision and delay per label type; false meter alerts; suspect hit rates."""
    by = res["by_type"]
    names = sorted(by)
    delays = [by[t]["median_delay_intervals"] or 0 for t in names]
    rates = (
        ("Recall by label type", "recall", "recall (share of scored labels detected)"),
        (
            "Precision by label type (alerts of the type's detectors)",
            "precision",
            "precision (share of those alerts that matched a label)",
        ),
    )
    out = [
        *(
            bar_chart(
                title,
                [(t, by[t][key]) for t in names],
                vmax=1.0,
                axis=axis,
                target=0.9,
                target_label="target 0.90 (h1-h4)",
            )
            for title, key, axis in rates
        ),
        bar_chart(
            "Median detection delay",
            [(t, by[t]["median_delay_intervals"]) for t in names],
            vmax=max([*delays, 96]) * 1.1,
            axis="intervals after the label's start",
            fmt="{:.0f}",
            target=96,
            target_label="bar: 1 day (96 intervals, h1-h4)",
        ),
    ]
    split = res.get("false_meter_alerts_per_1000_meter_days")
    if split:
        vals = [float(split["paged"]), float(split["information"])]
        out.append(
            bar_chart(
                "False meter alerts",
                [("paged (page / warning)", vals[0]), ("information (info)", vals[1])],
                vmax=max([*vals, 1.0]) * 1.2,
                axis="per 1,000 meter-days",
                target=1.0,
                target_label="target <= 1 (paged)",
            )
        )
    sus = res.get("suspects")
    if sus and sus["days"]:
        day = f"{max(sus['days']):g}"
        rows = [
            (f"{t} top {k}", e["at_day"][day].get(f"top{k}"))
            for t, e in [*sorted(sus["by_type"].items()), ("all loss-moving", sus["all_loss"])]
            for k in sus["top_k"]
        ]
        out.append(
            bar_chart(
                f"Suspect ranking at day {day}: labels whose meter is in its area's top k",
                rows,
                vmax=1.0,
                axis="hit rate",
                target=0.9,
                target_label="target 0.90 (top 10)",
            )
        )
    return out


# ---- HTML ----------------------------------------------------------------------------------------


def report_html(res: dict[str, Any]) -> str:
    """The whole report: figures, targets (measured / met / missed), per-type table, suspects,
    charts."""
    by = res["by_type"]
    rows = (
        "".join(
            f"<tr><td>{html.escape(t)}</td><td>{e['labels']}</td><td>{e['scored']}</td><td>{e['detected']}</td>"
            f"<td>{_f(e['precision'])}</td><td>{_f(e['recall'])}</td><td>{_f(e['f1'])}</td>"
            f"<td>{_f(e.get('recall_within_bar'))}</td><td>{_f(e['median_delay_intervals'], 1)}</td></tr>"
            for t, e in sorted(by.items())
        )
        or '<tr><td colspan="9">no labels of a scored type</td></tr>'
    )
    bars = "".join(
        f'<tr class="{status(b["met"]).replace("/", "")}"><td>{html.escape(b["bar"])}</td>'
        f"<td>{_f(b['measured'])}</td><td>{'<b>missed</b>' if b['met'] is False else status(b['met'])}</td>"
        f"<td>{html.escape(b['note'])}</td></tr>"
        for b in res["bars_measured"]
    )
    split = res["false_meter_alerts_per_1000_meter_days"]
    facts = [
        f"{res['meters']:,} customer meters, {res['areas']} areas, {res['days']:g} day(s)"
        + (f" from {html.escape(str(res['start']))}" if res.get("start") else "")
        + f", seed {res.get('seed', 'n/a')}; labelled meters {res.get('anomalous_meters', 'n/a')}.",
        f"False meter alerts per 1,000 meter-days: <b>paged {split['paged']:.2f}</b>, information "
        f"{split['information']:.2f} (by detector: {html.escape(_by_type(res['false_alerts_by_type']))}). "
        f"False area alerts: <b>{res['false_area_alerts']}</b> "
        f"({res['false_area_alerts_per_1000_area_days']:.2f} per 1,000 area-days).",
        f"State: <b>{res['state_bytes_per_meter']} bytes/meter</b> (numpy).",
    ]
    if "late_readings" in res:
        facts.append(
            f"{res['readings']:,} readings in {res['records']:,} records; <b>late readings</b> (beyond the "
            f"allowed lateness, refused): <b>{html.escape(_late(res))}</b>."
        )
    if "river_per_meter" in res:
        facts.append(
            f"The meter detector's state: {res['meter_detector']['state_bytes_per_meter']} bytes/meter + "
            f"the last register 8, against {res['river_per_meter']['pickle_bytes']} bytes pickled as river "
            "objects; "
            f"{res['meter_intervals_per_s']:,} meter-intervals/s, one process."
        )
    source = html.escape(str(res.get("source", "simulator")))
    labels = html.escape(str(res.get("labels_file", "the simulator's")))
    facts.append(f"Readings: {source}; labels: {labels}.")
    extra = ""
    if "meter_detector" in res:
        params = html.escape(json.dumps(res["meter_detector"]["params"]))
        extra = f"<p>Meter detector parameters: <code>{params}</code></p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>gridwatch detection</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}table{{border-collapse:collapse;margin-bottom:1em}}
tr:nth-child(even){{background:#f3f3f3}}tr.missed td{{color:#b00}}
svg.chart{{display:block;margin:1em 0}}#targets td:last-child{{text-align:left}}</style>
</head><body><h1>gridwatch detection</h1>
{"".join(f"<p>{f}</p>" for f in facts)}
<h2>Targets</h2>
<table id="targets"><tr><th>target</th><th>measured</th><th>status</th><th>note</th></tr>{bars}</table>
<p>n/a: nothing to judge the target on (no label of its type was scored), or no target.</p>
<h2>By label type</h2>
<table id="by-type"><tr><th>type</th><th>labels</th><th>scored</th><th>detected</th><th>precision</th>
<th>recall</th><th>F1</th><th>recall in bar delay</th><th>median delay (intervals)</th></tr>{rows}</table>
<p>theft_h5 / theft_h6 (same energy, another profile) have no target. A label is scored when the
detectors had a baseline at its start and a day after it (or it ended inside the run).</p>
{_suspects_html(res.get("suspects"))}
<h2>Charts</h2>
{"".join(charts(res))}
{extra}
</body></html>
"""


def _suspects_html(sus: dict[str, Any] | None) -> str:
    if not sus:
        return ""
    days = [f"{d:g}" for d in sus["days"]]
    head = "".join(f"<th>day {d}: top {k}</th>" for d in days for k in sus["top_k"])
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{e['labels']}</td>"
        + "".join(f"<td>{_f(e['at_day'][d].get(f'top{k}'))}</td>" for d in days for k in sus["top_k"])
        + f"<td>{_f(e['auc'])}</td></tr>"
        for name, e in [*sorted(sus["by_type"].items()), ("all loss-moving", sus["all_loss"])]
    )
    return f"""<h2>Suspect ranking</h2>
<p>Ranked through the worker's own path (Detection with suspects on). Hit rate: the share of a type's
labels (begun by then) whose meter is in its area's top k; AUC: the final ranking's scores, pooled
over areas, of the labelled meters against the {sus["honest_meters"]:,} meters without a label.
Suspect alerts opened: {sus["suspect_alerts_opened"]};
ranker state {sus["state_bytes_per_meter"]} bytes/meter.</p>
<table id="suspects"><tr><th>type</th><th>labels</th>{head}<th>AUC</th></tr>{rows}</table>"""


def _f(v: float | None, nd: int = 3, none: str = "n/a") -> str:
    return none if v is None else f"{v:.{nd}f}"
