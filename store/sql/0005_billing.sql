-- Billing runs: every statement `metering bill` records, versioned per period.
--
-- A run is committed iff its row is in billing_runs. Its lines are written first
-- (one insert into billing_lines), the run row last, so a crash in between leaves
-- lines under a run_id that has no run row; the next run for that period deletes
-- them before writing its own (metering/billing/runs.py).
--
-- run_id = "<period>-v<version>", e.g. "2026-10-v1", "FY2027Q1-v2". Version 1 is the
-- first statement of a period; a later version restates it, because late events
-- changed the quantities (input_sha256) or the price book changed (price_book_sha256).
-- Running a period whose digests both equal its latest run records nothing.
--
-- Sort key (period, version): the only question asked is "the latest run of a period".
CREATE TABLE IF NOT EXISTS metering.billing_runs
(
    run_id             String,
    period             String,
    period_kind        LowCardinality(String),
    period_start       Date,
    period_end         Date,
    version            UInt32,
    restates_run_id    String,
    price_book_sha256  String,
    input_sha256       String,
    lines              UInt32,
    messages           UInt64,
    tokens_in          UInt64,
    tokens_out         UInt64,
    charge_usd         Decimal(18, 2),
    list_value_usd     Decimal(18, 2),
    created_at         DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (period, version);

-- One statement line per (tenant, agency_id, agency_level) and run. The quantities
-- are exactly what was billed, including the tokens per model that the list value
-- was computed from (parallel arrays, sorted by model), so a run can be re-checked
-- against the rollups and the price book at any time without recomputing it.
-- period_end is exclusive. Sort key: the lines of one run, in statement order.
CREATE TABLE IF NOT EXISTS metering.billing_lines
(
    run_id             String,
    period             String,
    tenant             String,
    agency_id          String,
    agency_level       String,
    messages           UInt64,
    tokens_in          UInt64,
    tokens_out         UInt64,
    active_users       UInt64,
    plan               LowCardinality(String),
    billable_units     UInt64,
    charge_usd         Decimal(18, 2),
    list_value_usd     Decimal(18, 2),
    models             Array(String),
    model_tokens_in    Array(UInt64),
    model_tokens_out   Array(UInt64)
)
ENGINE = MergeTree
ORDER BY (run_id, tenant, agency_id, agency_level);
