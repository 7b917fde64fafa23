"""The area and cases dashboards: every SQL query they hold (panels, variables, annotations) runs
against the real PostgreSQL with the template variables substituted as Grafana's PostgreSQL
datasource does, and returns the expected columns and rows; the dashboard models follow the
rules of Grafana's dashboard linter that apply to them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from ruamel.yaml import YAML

from store import schema
from store.sink import WriteParams, build_batch, write
from store.synthetic import alert_record, lineloss_record, meter_record
from streams.contracts import encode
from streams.masking import MeterMask
from streams.settings import REPO
from streams.topology_feed import area_partition

DASHBOARDS = REPO / "grafana" / "dashboards"
PG_TYPE = "grafana-postgresql-datasource"
NOW = int(datetime.now(UTC).timestamp()) // 900 * 900
DAY0 = NOW - 86400  # one day of 15-minute windows up to now
FROM, TO = datetime.fromtimestamp(NOW - 2 * 86400, UTC), datetime.fromtimestamp(NOW + 3600, UTC)
VARS: dict[str, str | list[str]] = {
    "area": "A00001",
    "area_class": ["urban", "rural", "industrial"],
    "window_s": "900",
    "partitions": "4",
    "worker": ["0", "1", "2", "3"],
}


def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, SQL) of every query in a dashboard."""
    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["rawSql"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"]
    for a in dash["annotations"]["list"]:
        if "target" in a:
            yield f"annotation {a['name']!r}", a["target"]["rawSql"]


def render(sql: str, variables: dict[str, str | list[str]]) -> str:
    """Interpolate as Grafana's SQL datasources do: time macros, a multi-value variable as a
    quoted comma list, a single value as it is (the queries quote it where it is text)."""
    iso = "'{}'".format
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} BETWEEN {iso(FROM.isoformat())} AND {iso(TO.isoformat())}",
        sql,
    )
    sql = sql.replace("$__timeFrom()", iso(FROM.isoformat())).replace("$__timeTo()", iso(TO.isoformat()))
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        text = ",".join(f"'{v}'" for v in value) if isinstance(value, list) else value
        sql = sql.replace(f"${{{name}}}", text).replace(f"${name}", text)
    assert "$" not in sql, f"unsubstituted variable in {sql}"
    return sql


@pytest.fixture
def loaded(store_conn: psycopg.Connection[tuple[object, ...]]) -> psycopg.Connection[tuple[object, ...]]:
    """Two areas over a day, a corrected window, open and resolved alerts, two suspects (one
    inspected), an arrears warning on an industrial customer."""
    schema.sync_tariffs(store_conn, {"residential": 0.56, "industrial": 0.68})
    store_conn.commit()
    recs: list[tuple[str, int, int, int, bytes]] = []
    for n, m in enumerate([("M1", "A00001", "residential"), ("M2", "A00001", "residential"),
                           ("F1", "A00002", "industrial")]):  # fmt: skip
        recs.append(("topology", 0, n, 1, meter_record(*m)))
    offset = 0
    for w in range(DAY0, NOW, 900):
        for area in ("A00001", "A00002"):
            recs.append(("lineloss", 0, offset, 1000 * w, encode(lineloss_record(area, w))))
            offset += 1
    recs.append(
        ("lineloss", 0, offset, 1000 * NOW, encode(lineloss_record("A00001", DAY0, revision=1, seed=5)))
    )
    t = DAY0 + 3600
    suspect = {"area_id": "A00001", "rank": 1, "share_of_area_loss": 0.6, "correlation": 0.8,
               "relative_drop": 0.7, "deficit_kwh": 55.0}  # fmt: skip
    alerts = [
        alert_record("meter", "M1", "meter_theft_suspect", t, "opened", suspect, score=80.0),
        alert_record("meter", "M2", "meter_theft_suspect", t, "opened", {**suspect, "rank": 2}, score=40.0),
        alert_record("meter", "M2", "meter_theft_suspect", t, "resolved", {"area_id": "A00001",
                                                                          "verdict": "theft"}),
        alert_record("area", "A00001", "area_high_loss", t + 900, "opened", {"observed_kwh": 10.0}),
        alert_record("area", "A00002", "area_incomplete", t, "opened", {}),
        alert_record("area", "A00002", "area_incomplete", t, "resolved", {}),
        alert_record("meter", "F1", "meter_arrears_risk", t, "opened", {"expected_kwh": 20.0}),
    ]  # fmt: skip
    recs += [("alert", 1, i, 1000 * t, a) for i, a in enumerate(alerts)]
    day = datetime.fromtimestamp(t, UTC).date().isoformat()
    verdict = {"meter": "M2", "date": day, "verdict": "theft", "recovered_kwh": 100.0}
    recs.append(("inspection", 0, 0, 1000 * t, json.dumps(verdict).encode()))
    params = WriteParams(default_tariff=0.6, period_intervals=30 * 96)
    write(store_conn, build_batch(recs, MeterMask(None), FROM.date() - timedelta(days=1)), params)
    return store_conn


# columns each panel's query returns (in order), by dashboard and title
COLUMNS = {
    "Latest state": ["state"],
    "Pass rate of the area": ["pass rate", "judged windows"],
    "Energy lost": ["loss kWh"],
    "Collection completeness": ["completeness"],
    "Loss rate against its bounds": ["time", "loss rate", "lower bound", "upper bound"],
    "Supply vs billed energy": ["time", "supply", "billed", "loss"],
    "State timeline": ["time", "state"],
    "Open alerts": ["opened", "type", "severity", "kind", "entity", "score", "evidence"],
    "Suspects with evidence": ["meter", "score", "rank", "share of area loss", "correlation", "relative drop",
                               "estimated stolen kWh", "opened", "case"],
    "Open cases": ["open cases"],
    "Users found": ["users found"],
    "Energy recovered": ["recovered kWh"],
    "Money recovered": ["recovered yuan"],
    "Arrears exposure warned": ["exposure yuan"],
    "Cases opened": ["cases opened"],
    "Open cases by age and score": ["case", "meter", "area", "class", "opened", "age days", "score",
                                    "estimated kWh", "share of area loss"],
    "Verdicts": ["verdict date", "meter", "area", "verdict", "estimated kWh", "recovered kWh",
                 "recovered yuan"],
    "Verdicts by outcome": ["verdict", "verdicts"],
    "Ledger per day": ["time", "recovered yuan", "exposure warned yuan"],
    "Ledger per month": ["month", "users found", "inspections", "recovered kWh", "recovered yuan",
                         "arrears warnings", "exposure yuan", "cases opened"],
    "Arrears warnings": ["opened", "meter", "area", "class", "exposure yuan", "resolved"],
}  # fmt: skip


def run(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = conn.execute(render(sql, VARS).encode())
    return [d.name for d in cur.description or []], cur.fetchall()


@pytest.mark.parametrize("name", ["gridwatch-area.json", "gridwatch-cases.json"])
def test_every_query_runs_and_returns_its_columns(
    loaded: psycopg.Connection[tuple[object, ...]], name: str
) -> None:
    dash = load(name)
    seen = 0
    for where, sql in queries(dash):
        cols, rows = run(loaded, sql)
        assert rows, f"{name} {where}: no rows"
        title = where.split("'")[1] if where.startswith("panel") else None
        if title is not None:
            assert cols == COLUMNS[title], where
        seen += 1
    assert seen >= 9


def _panel_sql(name: str, title: str) -> str:
    (p,) = [p for p in panels(load(name)["panels"]) if p["title"] == title]
    return str(p["targets"][0]["rawSql"])


def test_area_panels_show_this_areas_windows(loaded: psycopg.Connection[tuple[object, ...]]) -> None:
    area = "gridwatch-area.json"
    _, series = run(loaded, _panel_sql(area, "Loss rate against its bounds"))
    assert len(series) == 96 and [r[0] for r in series] == sorted(r[0] for r in series)
    first = lineloss_record("A00001", DAY0, revision=1, seed=5)  # the correction, not the first record
    assert series[0][1:] == (first.loss_rate, first.lower, first.upper)
    _, energy = run(loaded, _panel_sql(area, "Supply vs billed energy"))
    assert energy[0][1:] == (first.supply_kwh, first.sales_kwh, first.loss_kwh)
    _, alerts = run(loaded, _panel_sql(area, "Open alerts"))
    assert sorted((r[1], r[4]) for r in alerts) == [
        ("area_high_loss", "A00001"),
        ("meter_theft_suspect", "M1"),
    ]
    _, suspects = run(loaded, _panel_sql(area, "Suspects with evidence"))
    assert [(r[0], r[1], r[6], r[8]) for r in suspects] == [("M1", 80.0, 55.0, "open")]
    _, classes = run(
        loaded, next(v["query"] for v in load(area)["templating"]["list"] if v["name"] == "area")
    )
    assert classes == [("A00001",), ("A00002",)]


def _variable_sql(name: str, variable: str) -> str:
    (v,) = [v for v in load(name)["templating"]["list"] if v["name"] == variable]
    return str(v["query"])


@pytest.mark.parametrize("partitions", [3, 4, 8])
def test_worker_variable_lists_the_areas_of_its_partition(
    loaded: psycopg.Connection[tuple[object, ...]], partitions: int
) -> None:
    """The `worker` variable offers every partition, and picking one lists the areas whose
    readings Kafka's default partitioner puts there (the partition the worker reads)."""
    area = "gridwatch-area.json"
    variables = {**VARS, "partitions": str(partitions)}
    workers = loaded.execute(render(_variable_sql(area, "worker"), variables).encode()).fetchall()
    assert [w for (w,) in workers] == list(range(partitions))
    listed: list[str] = []
    for (w,) in workers:
        rows = loaded.execute(render(_variable_sql(area, "area"), {**variables, "worker": [str(w)]}).encode())
        areas = [a for (a,) in rows.fetchall()]
        assert all(area_partition(a, partitions) == w for a in areas), (w, areas)
        listed += areas
    assert sorted(listed) == ["A00001", "A00002"]


def test_cases_panels_add_up_to_the_ledger(loaded: psycopg.Connection[tuple[object, ...]]) -> None:
    cases = "gridwatch-cases.json"
    assert run(loaded, _panel_sql(cases, "Open cases"))[1] == [(1,)]
    assert run(loaded, _panel_sql(cases, "Users found"))[1] == [(1,)]
    assert run(loaded, _panel_sql(cases, "Energy recovered"))[1] == [(100.0,)]
    assert run(loaded, _panel_sql(cases, "Money recovered"))[1] == [(pytest.approx(56.0),)]
    assert run(loaded, _panel_sql(cases, "Arrears exposure warned"))[1] == [
        (pytest.approx(20 * 30 * 96 * 0.68),)
    ]
    _, open_cases = run(loaded, _panel_sql(cases, "Open cases by age and score"))
    assert [(r[1], r[2], r[3], r[7]) for r in open_cases] == [("M1", "A00001", "residential", 55.0)]
    _, verdicts = run(loaded, _panel_sql(cases, "Verdicts"))
    assert [(r[1], r[3], r[5], r[6]) for r in verdicts] == [("M2", "theft", 100.0, pytest.approx(56.0))]


# ---- Grafana's dashboard linter (grafana/dashboard-linter), the rules that apply ----------------


@pytest.mark.parametrize("name", ["gridwatch-area.json", "gridwatch-cases.json"])
def test_dashboard_follows_the_linter_rules(name: str) -> None:
    dash = load(name)
    assert dash["uid"] == name.removesuffix(".json") and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    # template-datasource-rule: a datasource variable of the datasource's type
    ds = variables["datasource"]
    assert (ds["type"], ds["query"], ds["label"]) == ("datasource", PG_TYPE, "PostgreSQL")
    for v in variables.values():
        assert v.get("label"), f"template-label-rule: {v['name']}"
        if v["type"] == "query":
            assert v["refresh"] == 2, f"template-on-time-change-reload-rule: {v['name']}"
            assert v["datasource"] == {"type": PG_TYPE, "uid": "${datasource}"}, v["name"]
    ids = [p["id"] for p in panels(dash["panels"])]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dash["panels"]):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        # panel-datasource-rule, panel-title-description-rule, panel-units-rule
        assert p["datasource"] == {"type": PG_TYPE, "uid": "${datasource}"}, p["title"]
        assert all(t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
        assert p["title"] and p.get("description"), p["title"]
        if p["type"] in ("timeseries", "stat"):
            assert p["fieldConfig"]["defaults"].get("unit"), f"panel-units-rule: {p['title']}"
    units = {p["fieldConfig"]["defaults"]["unit"] for p in panels(dash["panels"]) if p["type"] != "row"}
    assert "rps" not in units


def test_the_postgres_datasource_is_provisioned() -> None:
    path = REPO / "grafana" / "provisioning" / "datasources" / "postgres.yml"
    doc = YAML(typ="safe", pure=True).load(path.read_text())
    (ds,) = doc["datasources"]
    assert (doc["apiVersion"], ds["uid"], ds["type"]) == (1, "gridwatch-postgres", PG_TYPE)
    assert ds["jsonData"]["database"] == "gridwatch" and not ds["isDefault"]
    for name in ("gridwatch-area.json", "gridwatch-cases.json"):
        (var,) = [v for v in load(name)["templating"]["list"] if v["name"] == "datasource"]
        assert var["current"]["value"] == ds["uid"]
