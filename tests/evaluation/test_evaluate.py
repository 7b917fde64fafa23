"""Detection harness: the detectors over a small simulated city, scored against its labels; the
labels reader; the suspect ranking's figures."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from evaluation.evaluate import (
    LabelsError,
    auc,
    checkpoints,
    evaluate,
    evaluate_files,
    out_dir,
    read_labels,
    score,
    suspect_figures,
)
from models.suspects import Suspect
from simulator.anomalies import AnomalySpec
from simulator.synth import SimSpec
from streams.settings import REPO
from topology import Topology

T0 = 1767225600
SAMPLE = REPO / "data" / "sample"


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _rec(kind: str, entity: str, dtype: str, ts: int) -> dict[str, Any]:
    return {
        "event": "opened",
        "entity_kind": kind,
        "entity_id": entity,
        "id": f"{kind}:{entity}:{dtype}:{ts}",
        "at": _iso(ts),
    }


def _label(entity: str, kind: str, first: int, last: int, **params: float) -> dict[str, Any]:
    return {
        "entity": entity,
        "type": kind,
        "start": _iso(T0 + (first - 1) * 900),
        "end": _iso(T0 + last * 900),
        "area_id": "A0",
        "role": "customer",
        "parameters": dict(params),
    }


def test_score_matches_alerts_to_labels() -> None:
    labels = [_label("M1", "stopped", 200, 400), _label("M2", "theft_h1", 300, 900, share=0.5)]
    records = [
        _rec("meter", "M1", "zero", T0 + 203 * 900),  # 4 intervals after the start
        _rec("meter", "M2", "drop", T0 + 340 * 900),
        _rec("meter", "M3", "drop", T0 + 500 * 900),  # nobody's label: false
        _rec("meter", "M1", "zero", T0 + 100 * 900),  # before M1's label: false
    ]
    out = score(labels, records, t0=T0, interval_s=900, meters=100, areas=1, days=10, warmup=96)
    assert out["by_type"]["stopped"]["median_delay_intervals"] == 4
    assert out["by_type"]["stopped"]["recall_within_bar"] == 1.0
    assert out["by_type"]["theft_h1"]["median_delay_intervals"] == 41
    assert out["by_type"]["theft_h1"]["precision"] == 0.5  # of 2 drop alerts, 1 is true
    assert out["false_alerts"] == 2
    assert out["false_alerts_per_1000_meter_days"] == pytest.approx(2.0)


@pytest.fixture(scope="module")
def small_city() -> dict[str, Any]:
    counts = {"stopped": 3, "theft_h1": 3, "theft_h2": 2, "spike": 2, "rollback": 2, "concentrator_outage": 1}
    spec = SimSpec(seed=11, areas=8, days=5, anomalies=AnomalySpec.only(counts, theft_share=0.6))
    return evaluate(spec)


def test_evaluate_small_city(small_city: dict[str, Any]) -> None:
    out = small_city
    json.dumps(out)  # JSON-able
    for key in ("meters", "days", "by_type", "false_alerts_per_1000_meter_days", "state_bytes_per_meter"):
        assert key in out
    by_type = out["by_type"]
    assert isinstance(by_type, dict)
    for t in ("stopped", "theft_h2", "spike", "rollback", "concentrator_outage"):
        entry = by_type[t]
        assert entry["recall"] in (None, 1.0), (t, entry)
        assert {"precision", "recall", "f1", "median_delay_intervals"} <= set(entry)
    assert by_type["stopped"]["median_delay_intervals"] in (None, 4.0)
    assert out["state_bytes_per_meter"] <= 64


def test_clean_city_raises_no_meter_alerts() -> None:
    out = evaluate(SimSpec(seed=4, areas=6, days=4, anomalies=AnomalySpec.only({})))
    assert out["false_alerts_per_1000_meter_days"] <= 1.0
    assert out["by_type"] == {}


# ---- labels ------------------------------------------------------------------------------------


def test_labels_jsonl_and_the_samples_labels_json_load_through_one_reader(tmp_path: Path) -> None:
    lines = [_label("M1", "stopped", 200, 400), _label("M2", "theft_h1", 300, 900, share=0.5)]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = read_labels(tmp_path)
    assert got.path == tmp_path / "labels.jsonl" and got.records == lines
    (tmp_path / "list.json").write_text(json.dumps(lines))
    assert read_labels(tmp_path, tmp_path / "list.json").records == lines

    sample = read_labels(SAMPLE)
    assert sample.path == SAMPLE / "labels.json" and sample.records is None
    topology = Topology.from_csv(SAMPLE / "meters.csv", SAMPLE / "areas.csv")
    labels = sample.resolve(topology, t0=T0, t_end=T0 + 86400, interval_s=900)
    kinds = sorted((lab["type"], lab["entity"]) for lab in labels if lab["role"] != "customer")
    assert kinds == [
        ("area_theft", "A0003"),
        ("concentrator_outage", "A0009"),
        ("supply_under_registering", "A0007-S"),
    ]
    thieves = [lab for lab in labels if lab["type"] == "theft_h1"]
    assert len(thieves) == 10 and {lab["area_id"] for lab in thieves} == {"A0003"}
    assert all(lab["parameters"]["share"] == 0.8 for lab in thieves)
    outage = next(lab for lab in labels if lab["type"] == "concentrator_outage")
    # A quarter of the meters silent for reads 48..55: intervals 48..56 lack energy.
    assert (outage["start"], outage["end"]) == (_iso(T0 + 47 * 900), _iso(T0 + 56 * 900))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"entity": "M1"}\n', "labels.jsonl:1: label needs a non-empty string 'type'"),
        ("\nnot json\n", "labels.jsonl:2: not JSON"),
        (
            '{"entity":"M1","type":"stopped","start":"x","end":"y","area_id":"A","role":"customer"}\n',
            "labels.jsonl:1: start / end must be ISO 8601 times",
        ),
        (
            '{"entity":"M1","type":"stopped","start":"2026-01-02T00:00Z","end":"2026-01-01T00:00Z",'
            '"area_id":"A","role":"customer"}\n',
            "labels.jsonl:1: end 2026-01-01T00:00Z is before start",
        ),
    ],
)
def test_a_malformed_label_names_its_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "labels.jsonl").write_text(content)
    with pytest.raises(LabelsError) as err:
        read_labels(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_labels_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="no labels.jsonl or labels.json"):
        read_labels(tmp_path)


def test_an_outage_explains_the_missing_alerts_of_its_meters() -> None:
    outage = {**_label("A0", "concentrator_outage", 100, 110), "role": "area"}
    records = [_rec("meter", "M1", "missing", T0 + 104 * 900), _rec("meter", "M9", "missing", T0 + 104 * 900)]
    for r in records:
        r["severity"] = "info"
    records.append({**_rec("meter", "M2", "drop", T0 + 300 * 900), "severity": "page"})
    out = score(
        [outage], records, t0=T0, interval_s=900, meters=100, areas=2, days=10, warmup=96,
        area_of={"M1": "A0", "M9": "A1", "M2": "A0"},
    )  # fmt: skip
    assert out["false_alerts_by_type"] == {"drop": 1, "missing": 1}  # M9 is in another area
    split = out["false_meter_alerts_per_1000_meter_days"]
    assert split == {"paged": pytest.approx(1.0), "information": pytest.approx(1.0)}


# ---- suspects ----------------------------------------------------------------------------------


def _suspect(area: str, meter: str, rank: int, score: float) -> Suspect:
    """A ranked meter with every piece of evidence at zero (only rank and score matter here)."""
    blank = {"float": 0.0, "int": 0, "str": ""}
    rest = {
        f.name: blank[str(f.type)]
        for f in fields(Suspect)
        if f.name not in ("area", "meter", "rank", "score")
    }
    return Suspect(area=area, meter=meter, rank=rank, score=score, **rest)


def test_suspect_figures_on_a_tiny_constructed_case() -> None:
    """Two areas of 12 meters; thieves T1 (h1, from day 1) and T2 (h3, from day 5), a stopped
    meter S (from day 2). At day 3 T1 is 2nd in A and S 6th in B; at day 7 T1 is 1st, T2 4th,
    S 11th. The final scores rank T1, T2 above every honest meter, S below all but one."""
    a = [f"A{i}" for i in range(10)]
    b = [f"B{i}" for i in range(10)]
    customers = {m: "A" for m in [*a, "T1", "T2"]} | {m: "B" for m in [*b, "S", "X"]}
    day = 86400
    labels = [
        {**_label("T1", "theft_h1", 1, 2), "start": _iso(T0 + 1 * day)},
        {**_label("T2", "theft_h3", 1, 2), "start": _iso(T0 + 5 * day)},
        {**_label("S", "stopped", 1, 2), "start": _iso(T0 + 2 * day)},
    ]

    def area(name: str, order: list[str], scores: list[float]) -> list[Suspect]:
        return [_suspect(name, m, i + 1, s) for i, (m, s) in enumerate(zip(order, scores, strict=True))]

    honest = [50.0 - i for i in range(10)]  # 50 .. 41, the same in both areas
    rankings = {
        T0 + 3 * day: {
            "A": area("A", ["A0", "T1", *a[1:], "T2"], [60, 55, *honest[1:], 0]),
            "B": area("B", [*b[:5], "S", *b[5:], "X"], [*honest[:5], 44.5, *honest[5:], 0]),
        },
        T0 + 7 * day: {
            "A": area("A", ["T1", "A0", "A1", "T2", *a[2:]], [99, 50, 49, 48.5, *honest[2:]]),
            "B": area("B", [*b, "S", "X"], [*honest, 30, 20]),
        },
    }
    out = suspect_figures(labels, rankings, customers=customers, t0=T0)
    assert out["days"] == [3.0, 7.0] and out["honest_meters"] == 21
    h1, h3, stopped = (out["by_type"][t] for t in ("theft_h1", "theft_h3", "stopped"))
    assert h1["at_day"]["3"] == {"scored": 1, "top3": 1.0, "top5": 1.0, "top10": 1.0}
    assert h1["at_day"]["7"] == {"scored": 1, "top3": 1.0, "top5": 1.0, "top10": 1.0}
    assert h3["at_day"]["3"] == {"scored": 0, "top3": None, "top5": None, "top10": None}  # not begun
    assert h3["at_day"]["7"] == {"scored": 1, "top3": 0.0, "top5": 1.0, "top10": 1.0}
    assert stopped["at_day"]["3"] == {"scored": 1, "top3": 0.0, "top5": 0.0, "top10": 1.0}
    assert stopped["at_day"]["7"] == {"scored": 1, "top3": 0.0, "top5": 0.0, "top10": 0.0}
    # AUC against the 21 honest meters (A0-A9, B0-B9, X): T1 (99) beats all; T2 (48.5) beats
    # 17 of them (A2-A9, B2-B9, X) and loses to 4 (A0, A1, B0, B1); S (30) beats X only.
    assert h1["auc"] == 1.0
    assert h3["auc"] == pytest.approx(17 / 21)
    assert stopped["auc"] == pytest.approx(1 / 21)
    pooled = out["all_loss"]  # all three move the loss
    assert pooled["at_day"]["7"] == {"scored": 3, "top3": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3),
                                     "top10": pytest.approx(2 / 3)}  # fmt: skip
    assert pooled["auc"] == pytest.approx((21 + 17 + 1) / 63)


def test_checkpoints_are_day_7_14_30_or_the_runs_end() -> None:
    day = 86400
    assert checkpoints(T0, 45.0) == [T0 + 7 * day, T0 + 14 * day, T0 + 30 * day]
    assert checkpoints(T0, 10.0) == [T0 + 7 * day, T0 + 10 * day]
    assert checkpoints(T0, 1.0) == [T0 + day]


def test_auc_counts_ties_half() -> None:
    assert auc([2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert auc([], [1.0]) is None


def test_suspects_ranked_through_the_workers_path(tmp_path: Path) -> None:
    """A small simulated city with strong thefts (h1 taking 80%, h3): evaluate_files ranks its
    suspects with Detection as the worker runs it; the thieves are in their area's top 10 at
    the run's end and outscore the honest meters."""
    args = ["simulate", "--out", str(tmp_path), "--areas", "4", "--days", "4", "--clean", "--no-progress"]
    args += ["--anomaly", "theft_h1=3", "--anomaly", "theft_h3=2", "--theft-share", "0.8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    res = evaluate_files(tmp_path)
    sus = res["suspects"]
    assert sus["days"] == [4.0] and sus["honest_meters"] == res["meters"] - 5
    pooled = sus["all_loss"]
    assert pooled["at_day"]["4"]["scored"] == 5
    assert pooled["at_day"]["4"]["top10"] == 1.0
    assert pooled["auc"] >= 0.95
    assert sus["suspect_alerts_opened"] >= 1  # the worker's path published suspects
    assert res["false_meter_alerts_per_1000_meter_days"]["paged"] <= 1.0


# ---- the command, and its report in a browser ---------------------------------------------------

# Caches and local state a run may touch without writing "into the checkout".
NOT_OURS = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".gridwatch", ".hypothesis"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in NOT_OURS]
        for name in filenames:
            st = (Path(dirpath) / name).stat()
            out[os.path.relpath(Path(dirpath) / name, root)] = (st.st_mtime_ns, st.st_size)
    return out


def _gridwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m cli`` from ``cwd``, importing this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sample_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, bool]:
    cwd = tmp_path_factory.mktemp("cwd")
    before = _tree(REPO)
    result = _gridwatch("evaluate", str(SAMPLE), cwd=cwd)
    return result, cwd, _tree(REPO) == before


def test_evaluate_the_sample_finds_its_anomalies_and_writes_only_in_the_working_directory(
    sample_run: tuple[subprocess.CompletedProcess[str], Path, bool],
) -> None:
    result, cwd, checkout_untouched = sample_run
    assert result.returncode == 0, result.stderr
    assert checkout_untouched, "evaluate wrote inside the checkout / the package"
    (folder,) = cwd.iterdir()
    assert folder.name.startswith("gridwatch-evaluate-")
    assert sorted(p.name for p in folder.iterdir()) == ["detection.html", "detection.json"]
    res = json.loads((folder / "detection.json").read_text())
    # The sample injects a theft area, a supply meter under-registering and a collection outage.
    for kind in ("area_theft", "supply_under_registering", "concentrator_outage"):
        assert res["by_type"][kind]["scored"] == res["by_type"][kind]["detected"] == 1, kind
    assert res["false_alerts"] == 0 and res["false_area_alerts"] == 0
    assert res["labels_file"].endswith("labels.json")
    out = result.stdout
    for text in ("area_theft", "supply_under_registering", "concentrator_outage", "late readings",
                 "false area alerts: 0", "paged 0.00", "status", "met", "suspect ranking"):  # fmt: skip
        assert text in out, text
    assert "records" in result.stderr  # the progress bar


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: bash scripts/setup.sh installs it (Debian package chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


def test_the_html_report_renders_its_tables_and_charts_in_chromium(
    sample_run: tuple[subprocess.CompletedProcess[str], Path, bool], tmp_path: Path
) -> None:
    result, cwd, _ = sample_run
    assert result.returncode == 0, result.stderr
    (folder,) = cwd.iterdir()
    page = (folder / "detection.html").as_uri()
    dom = _chromium("--dump-dom", page, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    targets = html[
        html.index('<table id="targets">') : html.index("</table>", html.index('<table id="targets">'))
    ]
    assert targets.count("<tr") >= 10 and "paged false meter alerts" in targets
    assert "<td>met</td>" in targets and "<b>missed</b>" in targets  # measured against the target
    by_type = html[html.index('<table id="by-type">') :]
    for kind in ("area_theft", "supply_under_registering", "concentrator_outage", "theft_h1"):
        assert f"<td>{kind}</td>" in by_type
    assert '<table id="suspects">' in html
    assert html.count('class="chart"') >= 5  # recall, precision, delay, false alerts, suspects
    assert html.count('class="target"') >= 5  # each with its target line
    assert "per 1,000 meter-days" in html and "intervals after the label's start" in html  # axis titles

    shot = tmp_path / "report.png"
    run = _chromium(
        f"--screenshot={shot}", "--window-size=1000,5000", "--hide-scrollbars", page, tmp=tmp_path
    )
    assert run.returncode == 0 and shot.exists(), run.stderr
    img = _png_rgb(shot.read_bytes())

    def rows_of(colour: tuple[int, int, int], tolerance: int) -> np.ndarray:
        near = np.abs(img - np.array(colour)).sum(axis=2) <= tolerance  # lines are anti-aliased
        return np.flatnonzero(near.any(axis=1))

    # Bars drawn in the charts' blue, in several charts (separate bands of rows), and dashed
    # target lines in red among them; text and tables in the first screenful.
    blue, red = rows_of((0x4A, 0x7B, 0xB7), 0), rows_of((0xC0, 0x39, 0x2B), 60)
    assert len(blue) > 50
    assert int((np.diff(blue) > 40).sum()) >= 3
    assert int((red > blue[0]).sum()) > 40
    assert int((img[:800] != 255).any(axis=2).sum()) > 5000


def _png_rgb(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB(A), non-interlaced PNG (what Chromium writes): height x width x RGB."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos : pos + 4])[0]
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6) and header[12] == 0
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, width * bpp + 1)
    out = np.zeros((height, width * bpp), np.int64)
    prev = np.zeros(width * bpp, np.int64)
    for y in range(height):
        f, line = int(raw[y, 0]), raw[y, 1:].astype(np.int64)
        if f == 1:  # sub: a running sum per channel
            line = line.reshape(width, bpp).cumsum(axis=0).reshape(-1) % 256
        elif f == 2:  # up
            line = (line + prev) % 256
        elif f in (3, 4):  # average, Paeth: byte by byte
            cur, up = line.tolist(), prev.tolist()
            for i in range(len(cur)):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = up[i], up[i - bpp] if i >= bpp else 0
                if f == 3:
                    cur[i] = (cur[i] + (a + b) // 2) % 256
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
            line = np.array(cur, np.int64)
        out[y] = line
        prev = line
    return out.reshape(height, width, bpp)[:, :, :3]


def test_a_missing_labels_file_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    city = tmp_path / "city"
    city.mkdir()
    for name in ("meters.csv", "areas.csv", "readings.jsonl.gz"):
        shutil.copy(SAMPLE / name, city / name)
    result = _gridwatch("evaluate", str(city), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"gridwatch evaluate: {city}: no labels.jsonl or labels.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city"]  # nothing written

    (city / "labels.jsonl").write_text('{"entity": "M1", "type": "stopped"}\n')
    result = _gridwatch("evaluate", str(city), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{city / 'labels.jsonl'}:1: label needs a non-empty string 'start'" in result.stderr


def test_reports_go_to_a_new_folder_in_the_working_directory_never_into_gridwatch(tmp_path: Path) -> None:
    first = out_dir(None, cwd=tmp_path)
    assert first is not None and first.parent == tmp_path and first.name.startswith("gridwatch-evaluate-")
    first.mkdir()
    second = out_dir(None, cwd=tmp_path)
    assert second is not None and second != first and second.parent == tmp_path  # never reused
    assert out_dir(REPO / "benchmarks" / "results") is None  # the benchmark's, not the command's
    assert out_dir(REPO / "streams" / "reports") is None  # the package
    assert out_dir(tmp_path / "mine") == tmp_path / "mine"
