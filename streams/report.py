"""The detection report: benchmarks/results/detection.html from the figures of an evaluation
(inline SVG charts, no network, no plotting library)."""

from __future__ import annotations

import html
from typing import Any

BARS = {
    "h1-h4 (>= 30% taken): recall within 1 day": ">= 0.90",
    "h1-h4: precision": ">= 0.90",
    "stopped / zero: recall within 4 intervals": ">= 0.99",
    "false alerts per 1,000 meter-days": "<= 1",
}


def bar_chart(title: str, rows: list[tuple[str, float | None]], *, vmax: float, fmt: str = "{:.2f}") -> str:
    w, row_h, left = 520, 18, 150
    h = 30 + row_h * len(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (name, v) in enumerate(rows):
        y = 26 + i * row_h
        parts.append(f'<text x="4" y="{y + 12}" font-size="11">{html.escape(name)}</text>')
        if v is None:
            parts.append(f'<text x="{left}" y="{y + 12}" font-size="11" fill="#888">n/a</text>')
            continue
        bw = max(1.0, (w - left - 60) * min(v, vmax) / vmax)
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{bw:.1f}" height="{row_h - 5}" fill="#4a7bb7"/>')
        parts.append(f'<text x="{left + bw + 4:.1f}" y="{y + 12}" font-size="11">{fmt.format(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def charts_and_rows(res: dict[str, Any]) -> tuple[list[str], str]:
    """The report's SVG charts (recall, precision, delay) and its per-type table rows."""
    by = res["by_type"]
    names = sorted(by)
    charts = [
        bar_chart("Recall", [(t, by[t]["recall"]) for t in names], vmax=1.0),
        bar_chart(
            "Precision (alerts of the type's detectors)", [(t, by[t]["precision"]) for t in names], vmax=1.0
        ),
        bar_chart(
            "Median detection delay (intervals)",
            [(t, by[t]["median_delay_intervals"]) for t in names],
            vmax=max([by[t]["median_delay_intervals"] or 0 for t in names] + [1]),
            fmt="{:.0f}",
        ),
    ]
    rows = "".join(
        f"<tr><td>{t}</td><td>{e['labels']}</td><td>{e['scored']}</td><td>{e['detected']}</td>"
        f"<td>{_f(e['precision'])}</td><td>{_f(e['recall'])}</td><td>{_f(e['f1'])}</td>"
        f"<td>{_f(e.get('recall_within_bar'))}</td><td>{_f(e['median_delay_intervals'], 1)}</td></tr>"
        for t, e in sorted(by.items())
    )
    return charts, rows


def report_html(res: dict[str, Any]) -> str:
    charts, rows = charts_and_rows(res)
    bars = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in BARS.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>gridwatch detection</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style>
</head><body><h1>gridwatch detection on a simulated city</h1>
<p>{res["meters"]:,} meters, {res["areas"]} areas, {res["days"]:g} days, seed {res.get("seed", "n/a")};
anomalous meters {res.get("anomalous_meters", "n/a")}. False meter alerts per 1,000 meter-days:
<b>{res["false_alerts_per_1000_meter_days"]:.2f}</b>; false area alerts per 1,000 area-days:
{res["false_area_alerts_per_1000_area_days"]:.2f}.
State: <b>{res["state_bytes_per_meter"]} bytes/meter</b> (numpy).
Source: {html.escape(str(res.get("source", "simulator")))}.</p>
<table><tr><th>type</th><th>labels</th><th>scored</th><th>detected</th><th>precision</th><th>recall</th>
<th>F1</th><th>recall in bar delay</th><th>median delay</th></tr>{rows}</table>
<h2>Bars</h2><table>{bars}</table>
{"".join(f"<p>{c}</p>" for c in charts)}
</body></html>
"""


def _f(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"
