-- Every counted event, once: counts and identifiers with their offset lineage,
-- never message content. It is three things at once:
--   1. the durable deduplication index (lookups by event_id: the sort key);
--   2. the staging area the rollups are built from, one flush at a time
--      (the minmax index on flush_seq makes "WHERE flush_seq = N" read one part);
--   3. the raw record that reconciliation compares rollups and bills against.
-- Rows of a flush that never reached flush_ledger are orphans, deleted on startup.
CREATE TABLE IF NOT EXISTS metering.counted_events
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
ENGINE = MergeTree
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Every rejected message, keyed by where it was read (topic, partition, offset).
-- `detail` names fields and rules, never values; content is never stored.
CREATE TABLE IF NOT EXISTS metering.rejections_log
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
ENGINE = MergeTree
ORDER BY (topic, partition, offset)
SETTINGS non_replicated_deduplication_window = 10000;
