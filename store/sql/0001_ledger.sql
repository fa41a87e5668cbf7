-- The flush ledger: the commit point of the sink and the source of truth for offsets.
--
-- One row per (flush, topic-partition), written in ONE insert into an unpartitioned
-- table, so a flush is committed entirely or not at all (one insert = one part).
-- A flush is counted iff its rows are here; everything else tagged with its
-- flush_seq is an orphan that recovery deletes. Kafka's committed offsets only
-- trail this table; on restart the worker skips offsets at or below last_offset.
--
-- Sort key (topic, partition, first_offset): the startup question is "where does
-- each partition resume", i.e. max(last_offset) per (topic, partition).
CREATE TABLE IF NOT EXISTS metering.flush_ledger
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
ENGINE = MergeTree
ORDER BY (topic, partition, first_offset)
SETTINGS non_replicated_deduplication_window = 10000;

-- Which committed flushes have been folded into every rollup. A committed flush
-- missing here is re-applied on startup with the same deduplication tokens.
CREATE TABLE IF NOT EXISTS metering.flush_applied
(
    flush_seq   UInt64,
    applied_at  DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY flush_seq;
