-- Rollups at the grain the oversight reports read. Distinct users come from merging
-- uniqExact states, and the cost of a report is the number of states it merges: a
-- month of the daily rollups is ~105k agency-day states (and ~500k model-day states),
-- while these tables hold one state per agency-month, per model-agency-month and per
-- tenant-day. Each is folded from the same committed flush as the daily rollups, by its
-- own INSERT ... SELECT with its own deduplication token (`streams/ledger_sql.py`).
--
-- Reports cover whole months (a month, a fiscal quarter, a fiscal year), so `month` is
-- the first day of a UTC month; a period is a contiguous key range within a tenant.

-- Sort key (tenant, month, agency_id, agency_level): per tenant, per level and per
-- agency for a period, and the contract's agency_monthly view.
CREATE TABLE IF NOT EXISTS metering.agency_monthly_rollup
(
    month         Date,
    tenant        String,
    agency_id     String,
    agency_level  String,
    messages      SimpleAggregateFunction(sum, UInt64),
    tokens_in     SimpleAggregateFunction(sum, UInt64),
    tokens_out    SimpleAggregateFunction(sum, UInt64),
    users         AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, month, agency_id, agency_level)
SETTINGS non_replicated_deduplication_window = 10000;

-- Sort key (tenant, month, model, agency_id): the by-model report for all agencies or one.
CREATE TABLE IF NOT EXISTS metering.model_monthly_rollup
(
    month         Date,
    tenant        String,
    model         String,
    agency_id     String,
    messages      SimpleAggregateFunction(sum, UInt64),
    tokens_in     SimpleAggregateFunction(sum, UInt64),
    tokens_out    SimpleAggregateFunction(sum, UInt64),
    users         AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, month, model, agency_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Sort key (tenant, day): the daily trend of a tenant, with its active agencies.
CREATE TABLE IF NOT EXISTS metering.tenant_daily_rollup
(
    day           Date,
    tenant        String,
    messages      SimpleAggregateFunction(sum, UInt64),
    tokens_in     SimpleAggregateFunction(sum, UInt64),
    tokens_out    SimpleAggregateFunction(sum, UInt64),
    agencies      AggregateFunction(uniqExact, String),
    users         AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, day)
SETTINGS non_replicated_deduplication_window = 10000;

-- A store created before this migration already has daily rollups (raw events may be
-- past their retention): fold them in once. Each statement inserts only into an empty
-- table, so running the file again adds nothing.
INSERT INTO metering.agency_monthly_rollup
SELECT toStartOfMonth(day) AS month, tenant, agency_id, agency_level,
       sum(messages), sum(tokens_in), sum(tokens_out), uniqExactMergeState(users)
FROM metering.agency_daily_rollup
WHERE (SELECT count() FROM metering.agency_monthly_rollup) = 0
GROUP BY month, tenant, agency_id, agency_level;

INSERT INTO metering.model_monthly_rollup
SELECT toStartOfMonth(day) AS month, tenant, model, agency_id,
       sum(messages), sum(tokens_in), sum(tokens_out), uniqExactMergeState(users)
FROM metering.model_daily_rollup
WHERE (SELECT count() FROM metering.model_monthly_rollup) = 0
GROUP BY month, tenant, model, agency_id;

INSERT INTO metering.tenant_daily_rollup
SELECT day, tenant, sum(messages), sum(tokens_in), sum(tokens_out),
       uniqExactState(agency_id), uniqExactMergeState(users)
FROM metering.agency_daily_rollup
WHERE (SELECT count() FROM metering.tenant_daily_rollup) = 0
GROUP BY day, tenant;

-- The contract's monthly views read the monthly rollup: same columns, same numbers.
CREATE OR REPLACE VIEW metering.agency_monthly AS
SELECT
    month,
    tenant,
    agency_id,
    agency_level,
    sum(messages)          AS messages,
    sum(tokens_in)         AS tokens_in,
    sum(tokens_out)        AS tokens_out,
    uniqExactMerge(users)  AS active_users
FROM metering.agency_monthly_rollup
GROUP BY month, tenant, agency_id, agency_level;

CREATE OR REPLACE VIEW metering.monthly_totals AS
SELECT
    month,
    tenant,
    uniqExact(agency_id)   AS agencies,
    uniqExactMerge(users)  AS active_users,
    sum(messages)          AS messages,
    sum(tokens_in)         AS tokens_in,
    sum(tokens_out)        AS tokens_out
FROM metering.agency_monthly_rollup
GROUP BY month, tenant;
