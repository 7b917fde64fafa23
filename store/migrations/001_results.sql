-- gridwatch results store, version 1: area-window results, alerts, meters, inspections.
-- Applied once, in order, by store.schema.migrate (docs/store.md).

-- One row per area-window: exactly the latest record of the compacted lineloss topic for it.
-- Partitioned by day of window_start (store.schema creates partitions as results arrive and
-- drops the ones past the retention).
CREATE TABLE lineloss (
    area_id            text             NOT NULL,
    area_class         text             NOT NULL,
    window_start       timestamptz      NOT NULL,
    window_end         timestamptz      NOT NULL,
    window_s           integer          NOT NULL,
    state              text             NOT NULL,
    supply_kwh         double precision NOT NULL,
    sales_kwh          double precision NOT NULL,
    loss_kwh           double precision NOT NULL,
    loss_rate          double precision,
    completeness       double precision NOT NULL,
    customers_expected integer          NOT NULL,
    customers_reported integer          NOT NULL,
    supplies_expected  integer          NOT NULL,
    supplies_reported  integer          NOT NULL,
    lower_bound        double precision NOT NULL,
    upper_bound        double precision NOT NULL,
    rollbacks          integer          NOT NULL,
    revision           integer          NOT NULL,
    -- where the row's record sits in the topic: the latest position wins (docs/store.md)
    src_partition      integer          NOT NULL,
    src_offset         bigint           NOT NULL,
    src_ts             timestamptz      NOT NULL,
    stored_at          timestamptz      NOT NULL,
    PRIMARY KEY (area_id, window_s, window_start)
) PARTITION BY RANGE (window_start);

-- The latest archive record of each meter (compacted topology topic). alert_meter_id is the id
-- alerts name the meter by: the keyed mask of meter_id when masking is on, else meter_id.
CREATE TABLE meters (
    meter_id       text             PRIMARY KEY,
    alert_meter_id text             NOT NULL,
    area_id        text             NOT NULL,
    role           text             NOT NULL,
    multiplier     double precision NOT NULL,
    customer_class text             NOT NULL,
    active         boolean          NOT NULL,
    effective_from timestamptz      NOT NULL,
    src_partition  integer          NOT NULL,
    src_offset     bigint           NOT NULL,
    src_ts         timestamptz      NOT NULL
);
CREATE INDEX meters_alert_meter ON meters (alert_meter_id);

-- Tariffs per customer class, written from the store's configuration at every start.
CREATE TABLE tariffs (
    customer_class text             PRIMARY KEY,
    yuan_per_kwh   double precision NOT NULL CHECK (yuan_per_kwh >= 0)
);

-- One row per alert (its opened and resolved records share the id).
CREATE TABLE alerts (
    alert_id       text             PRIMARY KEY,
    type           text             NOT NULL,
    severity       text             NOT NULL,
    entity_kind    text             NOT NULL,
    entity_id      text             NOT NULL,
    area_id        text,
    window_start   timestamptz      NOT NULL,
    opened_at      timestamptz,
    resolved_at    timestamptz,
    score          double precision NOT NULL,
    evidence       jsonb            NOT NULL,
    resolution     jsonb,
    customer_class text,
    -- arrears-risk warnings: the customer's average bill over the configured period, yuan
    exposure_yuan  double precision,
    src_ts         timestamptz      NOT NULL,
    stored_at      timestamptz      NOT NULL
);
CREATE INDEX alerts_type_opened ON alerts (type, opened_at);
CREATE INDEX alerts_area ON alerts (area_id, opened_at);
CREATE INDEX alerts_entity ON alerts (entity_id);

-- Inspectors' verdicts, one per meter and day; money priced when the verdict is stored.
CREATE TABLE inspections (
    meter_id       text             NOT NULL,
    inspected_on   date             NOT NULL,
    alert_meter_id text             NOT NULL,
    area_id        text,
    verdict        text             NOT NULL,
    recovered_kwh  double precision NOT NULL,
    customer_class text,
    yuan_per_kwh   double precision NOT NULL,
    recovered_yuan double precision NOT NULL,
    src_partition  integer          NOT NULL,
    src_offset     bigint           NOT NULL,
    src_ts         timestamptz      NOT NULL,
    stored_at      timestamptz      NOT NULL,
    PRIMARY KEY (meter_id, inspected_on)
);
CREATE INDEX inspections_alert_meter ON inspections (alert_meter_id, inspected_on);

-- Records the store could not use, with why (the store's dead letters).
CREATE TABLE rejected (
    topic         text        NOT NULL,
    src_partition integer     NOT NULL,
    src_offset    bigint      NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    value         bytea,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, src_partition, src_offset)
);

-- Cases: each theft-suspect alert opens one; the meter's first verdict on or after the day it
-- opened (and before its next case opened) closes it. Derived, so it cannot disagree with the
-- alerts and verdicts it comes from, whatever order they arrived in.
CREATE VIEW cases AS
WITH suspect AS (
    SELECT a.alert_id AS case_id,
           a.entity_id AS meter_id,
           a.area_id,
           a.customer_class,
           a.opened_at,
           a.score,
           a.evidence,
           (a.evidence ->> 'deficit_kwh')::double precision AS estimated_kwh,
           lead(a.opened_at) OVER (PARTITION BY a.entity_id ORDER BY a.opened_at) AS next_opened_at
      FROM alerts a
     WHERE a.type = 'meter_theft_suspect' AND a.opened_at IS NOT NULL
)
SELECT s.case_id, s.meter_id, s.area_id, s.customer_class, s.opened_at, s.score, s.evidence,
       s.estimated_kwh,
       CASE WHEN v.verdict IS NULL THEN 'open' ELSE 'closed' END AS status,
       v.inspected_on AS closed_on, v.verdict, v.recovered_kwh, v.recovered_yuan
  FROM suspect s
  LEFT JOIN LATERAL (
        SELECT i.inspected_on, i.verdict, i.recovered_kwh, i.recovered_yuan
          FROM inspections i
         WHERE i.alert_meter_id = s.meter_id
           AND i.inspected_on >= (s.opened_at AT TIME ZONE 'UTC')::date
           AND (s.next_opened_at IS NULL OR i.inspected_on < (s.next_opened_at AT TIME ZONE 'UTC')::date)
         ORDER BY i.inspected_on
         LIMIT 1
  ) v ON true;

-- The ledger per day (UTC): users found (verdict other than normal), kWh and yuan recovered,
-- arrears exposure warned (arrears-risk alerts opened that day), cases opened.
CREATE VIEW ledger_daily AS
WITH found AS (
    SELECT inspected_on AS day,
           count(DISTINCT meter_id) FILTER (WHERE verdict <> 'normal') AS users_found,
           count(*) AS inspections,
           sum(recovered_kwh) AS recovered_kwh,
           sum(recovered_yuan) AS recovered_yuan
      FROM inspections GROUP BY 1
), warned AS (
    SELECT (opened_at AT TIME ZONE 'UTC')::date AS day,
           count(*) AS arrears_warnings,
           sum(coalesce(exposure_yuan, 0)) AS exposure_warned_yuan
      FROM alerts WHERE type = 'meter_arrears_risk' AND opened_at IS NOT NULL GROUP BY 1
), opened AS (
    SELECT (opened_at AT TIME ZONE 'UTC')::date AS day, count(*) AS cases_opened
      FROM alerts WHERE type = 'meter_theft_suspect' AND opened_at IS NOT NULL GROUP BY 1
)
SELECT day,
       coalesce(f.users_found, 0)::bigint AS users_found,
       coalesce(f.inspections, 0)::bigint AS inspections,
       coalesce(f.recovered_kwh, 0)::double precision AS recovered_kwh,
       coalesce(f.recovered_yuan, 0)::double precision AS recovered_yuan,
       coalesce(w.arrears_warnings, 0)::bigint AS arrears_warnings,
       coalesce(w.exposure_warned_yuan, 0)::double precision AS exposure_warned_yuan,
       coalesce(o.cases_opened, 0)::bigint AS cases_opened
  FROM found f
  FULL JOIN warned w USING (day)
  FULL JOIN opened o USING (day);

-- The same per month; users found counts a meter once per month, not once per day.
CREATE VIEW ledger_monthly AS
WITH d AS (
    SELECT date_trunc('month', day)::date AS month,
           sum(inspections) AS inspections, sum(recovered_kwh) AS recovered_kwh,
           sum(recovered_yuan) AS recovered_yuan, sum(arrears_warnings) AS arrears_warnings,
           sum(exposure_warned_yuan) AS exposure_warned_yuan, sum(cases_opened) AS cases_opened
      FROM ledger_daily GROUP BY 1
), u AS (
    SELECT date_trunc('month', inspected_on)::date AS month, count(DISTINCT meter_id) AS users_found
      FROM inspections WHERE verdict <> 'normal' GROUP BY 1
)
SELECT d.month, coalesce(u.users_found, 0)::bigint AS users_found, d.inspections::bigint,
       d.recovered_kwh::double precision, d.recovered_yuan::double precision,
       d.arrears_warnings::bigint, d.exposure_warned_yuan::double precision, d.cases_opened::bigint
  FROM d LEFT JOIN u USING (month);
