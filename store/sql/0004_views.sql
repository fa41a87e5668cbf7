-- The contract views (CONTRACT section 3): exact, final and merged numbers.
-- Readers need no FINAL and no GROUP BY: the views merge the partial states.
CREATE VIEW IF NOT EXISTS metering.agency_daily AS
SELECT
    day,
    tenant,
    agency_id,
    agency_level,
    sum(messages)          AS messages,
    sum(tokens_in)         AS tokens_in,
    sum(tokens_out)        AS tokens_out,
    uniqExactMerge(users)  AS active_users
FROM metering.agency_daily_rollup
GROUP BY day, tenant, agency_id, agency_level;

CREATE VIEW IF NOT EXISTS metering.agency_monthly AS
SELECT
    toStartOfMonth(day)    AS month,
    tenant,
    agency_id,
    agency_level,
    sum(messages)          AS messages,
    sum(tokens_in)         AS tokens_in,
    sum(tokens_out)        AS tokens_out,
    uniqExactMerge(users)  AS active_users
FROM metering.agency_daily_rollup
GROUP BY month, tenant, agency_id, agency_level;

CREATE VIEW IF NOT EXISTS metering.monthly_totals AS
SELECT
    toStartOfMonth(day)    AS month,
    tenant,
    uniqExact(agency_id)   AS agencies,
    uniqExactMerge(users)  AS active_users,
    sum(messages)          AS messages,
    sum(tokens_in)         AS tokens_in,
    sum(tokens_out)        AS tokens_out
FROM metering.agency_daily_rollup
GROUP BY month, tenant;

-- Rejections of committed flushes only: a message is recorded once per
-- (topic, partition, offset), however often the worker restarts.
CREATE VIEW IF NOT EXISTS metering.rejected_events AS
SELECT
    received_at,
    reason,
    detail,
    event_id,
    agency_id,
    topic,
    partition,
    offset,
    size_bytes,
    flush_seq
FROM metering.rejections_log
WHERE flush_seq IN (SELECT flush_seq FROM metering.flush_ledger);
