-- Ranges the ledger holds whose counted rows or rejections the store lost (a power
-- loss can drop the newest parts of a table; the ledger row of a flush survives while
-- its staged rows do not) and that could not be read again from Kafka: the broker no
-- longer holds them (retention), or they no longer hold what the flush counted. A
-- writer repairs every other such range at start, by reading it again and staging
-- exactly what its flush counted (`streams/ledger_repair.py`; the content hash proves
-- it). `metering certify` fails while a row here names a range. One row per range and
-- flush; the same loss found again is the same row (readers group by flush and range).
-- Sort key (topic, partition, first_offset): certify asks per partition.
CREATE TABLE IF NOT EXISTS metering.lost_ranges
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
ENGINE = MergeTree
ORDER BY (topic, partition, first_offset);
