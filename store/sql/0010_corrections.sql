-- Corrections, append-only: `metering correct void|amend` publishes one record on the
-- corrections topic; the worker that owns the store applies it exactly once, in the
-- numbered steps of streams/corrections.py (the statements: store/corrections/sql.py):
--   a) write the correction's marks, tagged with its correction_seq;
--   b) COMMIT: one row in metering.corrections (all or nothing, like the flush ledger);
--   c) rebuild every rollup key the marked events touch from metering.corrected_events;
--   d) one row in metering.corrections_applied.
-- Marks whose correction_seq is not in metering.corrections are orphans of a crash
-- before b) and are deleted at startup; a committed correction missing from
-- corrections_applied is rebuilt again (c and d are idempotent). counted_events is
-- never deleted or updated: a corrected event stays, and its marks say by which
-- correction and how it was corrected.

-- The commit point of a correction: one row per correction decided, applied or refused
-- (a refused correction records why, and its id is never decided again). Unpartitioned
-- and one insert per correction, so a correction is committed entirely or not at all.
-- Sort key (correction_id): the one question per record is "was this id decided?";
-- the table holds one row per correction (hundreds a year), so order by seq is cheap.
CREATE TABLE IF NOT EXISTS metering.corrections
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
ENGINE = MergeTree
ORDER BY correction_id
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per (correction, event) it marks: the event's whole state after the
-- correction (void, or its amended agency and token counts), so that the latest
-- correction of an event (highest correction_seq) is the event's state.
-- Sort key (event_id, correction_seq): corrected_events joins marks by event_id, and
-- the latest mark of an event is the last of its key range.
CREATE TABLE IF NOT EXISTS metering.correction_marks
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
ENGINE = MergeTree
ORDER BY (event_id, correction_seq)
SETTINGS non_replicated_deduplication_window = 10000;

-- Which committed corrections have been rebuilt into every rollup.
CREATE TABLE IF NOT EXISTS metering.corrections_applied
(
    correction_seq  UInt64,
    correction_id   String,
    keys_rebuilt    UInt64,
    applied_at      DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY correction_seq;

-- The raw record after corrections: events of committed flushes, without the voided
-- ones, with amended fields replaced by the latest committed correction of the event
-- (highest correction_seq). `correction_id` names that correction ('' when none).
-- Rollup rebuilds, reconciliation, certificates and verify read the corrected record.
CREATE VIEW IF NOT EXISTS metering.corrected_events AS
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
    -- aliases differ from the columns: an alias equal to a column name would replace
    -- the column in WHERE
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

-- Each billing run records the corrections in effect for its period when its
-- quantities were read, so a restatement names the corrections since the run before.
ALTER TABLE metering.billing_runs ADD COLUMN IF NOT EXISTS corrections Array(String) DEFAULT [];
