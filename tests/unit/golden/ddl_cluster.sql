-- govmeter schema for the ClickHouse cluster 'govmeter' (one shard, any number of replicas)
-- from store/sql/ by `metering ddl --mode cluster --cluster 'govmeter'`.
-- Every statement is idempotent. `metering migrate` runs the same statements
-- and records each file in metering.schema_versions.

-- bookkeeping (store/migrations.py)
CREATE DATABASE IF NOT EXISTS metering ON CLUSTER 'govmeter';

CREATE TABLE IF NOT EXISTS metering.schema_versions ON CLUSTER 'govmeter' (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}') ORDER BY version;

-- releases before 0012 stop at their first read of this view
CREATE VIEW IF NOT EXISTS metering.schema_migrations ON CLUSTER 'govmeter' AS SELECT toUInt32(0) AS version, '' AS name, '' AS checksum, toDateTime64(0, 3, 'UTC') AS applied_at FROM system.one WHERE throwIf(dummy = 0, 'this store is arbitrated between its writers by the store itself (govmeter migration 0012_store_arbitration): this release of govmeter predates that and cannot write to it or read it safely; upgrade it to the release that migrated the store (metering.schema_versions lists what was applied)');

-- store/sql/0001_ledger.sql (sha256 39a3a574d6859de089a9bb7950c52a0fcba42f2c6cbcada37137e7eb3c3ab48f)
CREATE TABLE IF NOT EXISTS metering.flush_ledger ON CLUSTER 'govmeter'
(
    flush_seq     UInt64,
    topic         String,
    partition     UInt32,
    first_offset  UInt64,
    last_offset   UInt64,
    messages      UInt32,
    counted       UInt32,
    duplicates    UInt32,
    rejected      UInt32,
    worker        String,
    committed_at  DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (topic, partition, first_offset)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.flush_applied ON CLUSTER 'govmeter'
(
    flush_seq   UInt64,
    applied_at  DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY flush_seq;

-- store/sql/0002_counted_events.sql (sha256 5e57882674ee35e977ab7a240ba541de7093fd37f5e2006a02f1ea5beec9abb9)
CREATE TABLE IF NOT EXISTS metering.counted_events ON CLUSTER 'govmeter'
(
    event_id         UUID,
    occurred_at      DateTime64(3, 'UTC'),
    tenant           String,
    agency_id        String,
    agency_level     LowCardinality(String),
    user_id          String,
    conversation_id  String,
    model            LowCardinality(String),
    feature          LowCardinality(String),
    tokens_in        UInt32,
    tokens_out       UInt32,
    topic            LowCardinality(String),
    partition        UInt32,
    offset           UInt64,
    flush_seq        UInt64,
    ingested_at      DateTime64(3, 'UTC'),
    INDEX flush_seq_minmax flush_seq TYPE minmax GRANULARITY 1
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY event_id
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.rejections_log ON CLUSTER 'govmeter'
(
    received_at  DateTime64(3, 'UTC'),
    reason       LowCardinality(String),
    detail       String,
    event_id     Nullable(String),
    agency_id    Nullable(String),
    topic        LowCardinality(String),
    partition    UInt32,
    offset       UInt64,
    size_bytes   UInt32,
    flush_seq    UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (topic, partition, offset)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

-- store/sql/0003_rollups.sql (sha256 b2dd4137ba701d024c3aedc8e0c89b1a0e50b2d7478a9967b9e0f03c7204f736)
CREATE TABLE IF NOT EXISTS metering.agency_daily_rollup ON CLUSTER 'govmeter'
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant, day, agency_id, agency_level)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.model_daily_rollup ON CLUSTER 'govmeter'
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant, day, model, feature, agency_id, agency_level)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

-- store/sql/0004_views.sql (sha256 081c00642c67215c0c920875be6dc96a1570d699f16e29bc9b3e885ac135a916)
CREATE VIEW IF NOT EXISTS metering.agency_daily ON CLUSTER 'govmeter' AS
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

CREATE VIEW IF NOT EXISTS metering.agency_monthly ON CLUSTER 'govmeter' AS
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

CREATE VIEW IF NOT EXISTS metering.monthly_totals ON CLUSTER 'govmeter' AS
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

CREATE VIEW IF NOT EXISTS metering.rejected_events ON CLUSTER 'govmeter' AS
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

-- store/sql/0005_billing.sql (sha256 73fbd9323d9a9ecac1c1b70fd912f0debce8e5bd32f7d82a9d2615bba01dfb02)
CREATE TABLE IF NOT EXISTS metering.billing_runs ON CLUSTER 'govmeter'
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (period, version);

CREATE TABLE IF NOT EXISTS metering.billing_lines ON CLUSTER 'govmeter'
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
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (run_id, tenant, agency_id, agency_level);

-- store/sql/0006_report_rollups.sql (sha256 59ffb89fc913c1699ce0f6853cc3545a944590d8866e28bb36ddd5c49a2e0cbf)
CREATE TABLE IF NOT EXISTS metering.agency_monthly_rollup ON CLUSTER 'govmeter'
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant, month, agency_id, agency_level)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.model_monthly_rollup ON CLUSTER 'govmeter'
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
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant, month, model, agency_id)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.tenant_daily_rollup ON CLUSTER 'govmeter'
(
    day           Date,
    tenant        String,
    messages      SimpleAggregateFunction(sum, UInt64),
    tokens_in     SimpleAggregateFunction(sum, UInt64),
    tokens_out    SimpleAggregateFunction(sum, UInt64),
    agencies      AggregateFunction(uniqExact, String),
    users         AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant, day)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

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

CREATE OR REPLACE VIEW metering.agency_monthly ON CLUSTER 'govmeter' AS
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

CREATE OR REPLACE VIEW metering.monthly_totals ON CLUSTER 'govmeter' AS
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

-- store/sql/0007_claims_and_expired_offsets.sql (sha256 68f6dc54040bd6a1d622ef6c879164cef43f88b02eb20f100b914fef597a165d)
CREATE TABLE IF NOT EXISTS metering.billing_claims ON CLUSTER 'govmeter'
(
    period      String,
    version     UInt32,
    attempt     UInt32,
    claim_id    String,
    claimed_by  String,
    claimed_at  DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (period, version, attempt)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.expired_offsets ON CLUSTER 'govmeter'
(
    topic          LowCardinality(String),
    partition      UInt32,
    first_missing  UInt64,
    resume_at      UInt64,
    detected_at    DateTime64(3, 'UTC'),
    worker         String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (topic, partition, first_missing);

-- store/sql/0008_ledger_chain.sql (sha256 ec22c9659c7961194d85205e8ad415e35890615eb362d1540ac3f87ec9dca634)
ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter' ADD COLUMN IF NOT EXISTS content_sha256 String DEFAULT '';

ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter' ADD COLUMN IF NOT EXISTS chain_sha256 String DEFAULT '';

-- store/sql/0009_certificates.sql (sha256 6b0c620ecc3a152eb60f0f93ed8c8a7892a02aea6c0c64c7debda3384d5f42d1)
CREATE TABLE IF NOT EXISTS metering.certificates ON CLUSTER 'govmeter'
(
    period      String,
    created_at  DateTime64(3, 'UTC'),
    format      LowCardinality(String),
    sha256      String,
    body        String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (period, created_at);

-- store/sql/0010_corrections.sql (sha256 1eade21df247c55d9bc28dad7fb39aedc03ee7f238e0d68c50c741cdcf706910)
CREATE TABLE IF NOT EXISTS metering.corrections ON CLUSTER 'govmeter'
(
    correction_id     String,
    correction_seq    UInt64,
    status            LowCardinality(String),
    refused_reason    String,
    action            LowCardinality(String),
    reason            String,
    requested_by      String,
    approved_by       String,
    requested_at      DateTime64(3, 'UTC'),
    event_id          String,
    scope_agency_id   String,
    scope_from        Nullable(DateTime64(3, 'UTC')),
    scope_to          Nullable(DateTime64(3, 'UTC')),
    amendments        String,
    events_marked     UInt64,
    first_day         Nullable(Date),
    last_day          Nullable(Date),
    source_topic      String,
    source_partition  UInt32,
    source_offset     UInt64,
    worker            String,
    committed_at      DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY correction_id
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.correction_marks ON CLUSTER 'govmeter'
(
    event_id        UUID,
    correction_seq  UInt64,
    correction_id   String,
    action          LowCardinality(String),
    agency_id       String,
    agency_level    LowCardinality(String),
    tokens_in       UInt32,
    tokens_out      UInt32,
    marked_at       DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (event_id, correction_seq)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.corrections_applied ON CLUSTER 'govmeter'
(
    correction_seq  UInt64,
    correction_id   String,
    keys_rebuilt    UInt64,
    applied_at      DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY correction_seq;

CREATE VIEW IF NOT EXISTS metering.corrected_events ON CLUSTER 'govmeter' AS
SELECT
    e.event_id                                                    AS event_id,
    e.occurred_at                                                 AS occurred_at,
    e.tenant                                                      AS tenant,
    if(m.latest_seq = 0, e.agency_id, m.latest_agency_id)            AS agency_id,
    if(m.latest_seq = 0, toString(e.agency_level), toString(m.latest_agency_level))
                                                                  AS agency_level,
    e.user_id                                                     AS user_id,
    e.conversation_id                                             AS conversation_id,
    toString(e.model)                                             AS model,
    toString(e.feature)                                           AS feature,
    if(m.latest_seq = 0, e.tokens_in, m.latest_tokens_in)            AS tokens_in,
    if(m.latest_seq = 0, e.tokens_out, m.latest_tokens_out)          AS tokens_out,
    e.topic                                                       AS topic,
    e.partition                                                   AS partition,
    e.offset                                                      AS offset,
    e.flush_seq                                                   AS flush_seq,
    e.ingested_at                                                 AS ingested_at,
    m.latest_id                                               AS correction_id
FROM metering.counted_events AS e
LEFT JOIN
(
    SELECT
        event_id                                         AS marked_event_id,
        max(correction_seq)                              AS latest_seq,
        argMax(correction_id, correction_seq)            AS latest_id,
        argMax(toString(action), correction_seq)         AS latest_action,
        argMax(agency_id, correction_seq)                AS latest_agency_id,
        argMax(toString(agency_level), correction_seq)   AS latest_agency_level,
        argMax(tokens_in, correction_seq)                AS latest_tokens_in,
        argMax(tokens_out, correction_seq)               AS latest_tokens_out
    FROM metering.correction_marks
    WHERE correction_seq IN (SELECT correction_seq FROM metering.corrections)
    GROUP BY event_id
) AS m ON e.event_id = m.marked_event_id
WHERE e.flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)
  AND m.latest_action != 'void';

ALTER TABLE metering.billing_runs ON CLUSTER 'govmeter' ADD COLUMN IF NOT EXISTS corrections Array(String) DEFAULT [];

-- store/sql/0011_corrections_chain.sql (sha256 bd03b90ec05e87131c589604516db86e1e53d83843259ca419a0eb3fddd26674)
ALTER TABLE metering.corrections ON CLUSTER 'govmeter'
    ADD COLUMN IF NOT EXISTS content_sha256 String DEFAULT '',
    ADD COLUMN IF NOT EXISTS chain_sha256 String DEFAULT '';

-- store/sql/0012_store_arbitration.sql (sha256 34d08fa0efaea37b2e53c168dbc811563803bc1a895b57feb42bb143ade5af7e)
ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter' ADD COLUMN IF NOT EXISTS commit_seq UInt64 DEFAULT flush_seq;

ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter' ADD COLUMN IF NOT EXISTS writer_no UInt32 DEFAULT 0;

ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter'
    ADD INDEX IF NOT EXISTS commit_seq_minmax commit_seq TYPE minmax GRANULARITY 1;

ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter' MATERIALIZE INDEX commit_seq_minmax SETTINGS mutations_sync = 2;

ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter'
    ADD CONSTRAINT IF NOT EXISTS only_registered_writers_commit__upgrade_older_govmeter_writers
    CHECK writer_no > 0;

CREATE TABLE IF NOT EXISTS metering.writers ON CLUSTER 'govmeter'
(
    writer_no       UInt32,
    writer_id       String,
    name            String,
    host            String,
    pid             UInt32,
    release         String,
    consumer_group  String,
    started_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY writer_no
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS metering.writer_heartbeats ON CLUSTER 'govmeter'
(
    writer_no   UInt32,
    beat_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    state       LowCardinality(String),
    partitions  Array(String),
    flushes     UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', beat_at)
ORDER BY writer_no
TTL toDateTime(beat_at) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS metering.store_leases ON CLUSTER 'govmeter'
(
    name       LowCardinality(String),
    term       UInt64,
    writer_no  UInt32,
    released   UInt8,
    at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (name, term, released)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

ALTER TABLE metering.corrections ON CLUSTER 'govmeter'
    ADD COLUMN IF NOT EXISTS ledger_head UInt64 DEFAULT 18446744073709551615;

-- store/sql/0013_lost_ranges.sql (sha256 c3a1115d67f5b6ed5d327c3c3399ebc66583946a9f190c5d7369cd66fc90caa9)
CREATE TABLE IF NOT EXISTS metering.lost_ranges ON CLUSTER 'govmeter'
(
    topic         LowCardinality(String),
    partition     UInt32,
    first_offset  UInt64,
    last_offset   UInt64,
    flush_seq     UInt64,
    commit_seq    UInt64,
    events_lost   UInt64,
    rejections_lost UInt64,
    reason        String,
    detected_at   DateTime64(3, 'UTC') DEFAULT now64(3),
    worker        String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (topic, partition, first_offset);

-- store/sql/0014_correction_agencies.sql (sha256 af9b575e6824f7d68cc2ddd2833069e906e13cd5ee2d7d171e2c156f7f51d187)
CREATE TABLE IF NOT EXISTS metering.correction_agencies ON CLUSTER 'govmeter'
(
    correction_seq  UInt64,
    event_id        UUID,
    agency_id       String
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (agency_id, correction_seq, event_id);

INSERT INTO metering.correction_agencies (correction_seq, event_id, agency_id)
WITH
    (SELECT groupArray(correction_seq) FROM metering.corrections
     WHERE correction_seq NOT IN (SELECT correction_seq FROM metering.correction_agencies))
        AS todo,
    dealt AS
    (
        SELECT correction_seq AS seq, event_id AS dealt_event, agency_id AS after
        FROM metering.correction_marks
        WHERE has(todo, correction_seq)
        UNION ALL
        SELECT correction_seq AS seq, toUUIDOrZero(event_id) AS dealt_event, '' AS after
        FROM metering.corrections
        WHERE has(todo, correction_seq) AND event_id != '' AND events_marked = 0
    )
SELECT DISTINCT d.seq, d.dealt_event, agency
FROM dealt AS d
LEFT JOIN
(
    SELECT event_id, arraySort(groupArray((correction_seq, agency_id))) AS history
    FROM metering.correction_marks
    WHERE correction_seq IN (SELECT correction_seq FROM metering.corrections)
      AND event_id IN (SELECT dealt_event FROM dealt)
    GROUP BY event_id
) AS h ON h.event_id = d.dealt_event
LEFT JOIN
(
    SELECT event_id, any(agency_id) AS counted_for
    FROM metering.counted_events
    WHERE event_id IN (SELECT dealt_event FROM dealt)
      AND flush_seq IN (SELECT flush_seq FROM metering.flush_ledger)
    GROUP BY event_id
) AS o ON o.event_id = d.dealt_event
ARRAY JOIN [
    if(arrayLast(x -> x.1 < d.seq, h.history).2 != '',
       arrayLast(x -> x.1 < d.seq, h.history).2, o.counted_for),
    d.after,
    o.counted_for
] AS agency
WHERE agency != '' AND d.dealt_event != toUUID('00000000-0000-0000-0000-000000000000')
  AND 1
SETTINGS max_insert_threads = 1, max_threads = 1,
         min_insert_block_size_rows = 1000000000, min_insert_block_size_bytes = 100000000000;

-- store/sql/0015_durable_inserts.sql (sha256 0eb773b33bc254a5ced0d5bdecc4a8bdaf6cfebea69bc49dcb34b0a9afea4ac9)
ALTER TABLE metering.flush_ledger ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.counted_events ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.rejections_log ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.flush_applied ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.corrections ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.correction_marks ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.corrections_applied ON CLUSTER 'govmeter'
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
