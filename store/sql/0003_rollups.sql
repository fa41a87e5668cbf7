-- Rollups hold partial aggregates: sums as SimpleAggregateFunction(sum) and distinct
-- users as uniqExact states, so days merge exactly into months and agencies into
-- tenants. Each committed flush is folded in by one INSERT ... SELECT whose
-- insert_deduplication_token is derived from the flush, so a re-applied flush is
-- dropped by ClickHouse: that is why the deduplication window is on (it is 0 by
-- default on non-replicated MergeTree).
--
-- Sort key (tenant, day, agency_id, agency_level): reports ask for one tenant over a
-- date range, then group by agency; a month is a contiguous range of the key.
-- Unpartitioned on purpose: a year is ~1.3M rows at 3,500 agencies, and one
-- insert then stays one block, which keeps the deduplication token exact.
CREATE TABLE IF NOT EXISTS metering.agency_daily_rollup
(
    day           Date,
    tenant        String,
    agency_id     String,
    agency_level  String,
    messages      SimpleAggregateFunction(sum, UInt64),
    tokens_in     SimpleAggregateFunction(sum, UInt64),
    tokens_out    SimpleAggregateFunction(sum, UInt64),
    users         AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, day, agency_id, agency_level)
SETTINGS non_replicated_deduplication_window = 10000;

-- The same per model and feature, for oversight ("by model") and list-price value.
-- Sort key puts model before agency: the by-model report scans one tenant-period.
CREATE TABLE IF NOT EXISTS metering.model_daily_rollup
(
    day           Date,
    tenant        String,
    model         String,
    feature       String,
    agency_id     String,
    agency_level  String,
    messages      SimpleAggregateFunction(sum, UInt64),
    tokens_in     SimpleAggregateFunction(sum, UInt64),
    tokens_out    SimpleAggregateFunction(sum, UInt64),
    users         AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, day, model, feature, agency_id, agency_level)
SETTINGS non_replicated_deduplication_window = 10000;
