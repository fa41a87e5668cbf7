-- Which agency may read which correction, and which of its marks: the row filters of
-- agency users read this table (store/local_server/config.py for the local server,
-- metering/oversight/access.py for a ClickHouse server), so an agency reads the
-- corrections that changed its own numbers, and no other agency's.
--
-- One row per (correction, event, agency): every event a correction dealt with (each
-- event it marked; the one event an event correction named, when it marked none) and
-- every agency that event was in: before the correction (the agency of the event's
-- latest earlier committed mark, else the agency it was counted for), after it (the
-- agency of the correction's own mark: an amend can move an event from agency A to B,
-- and both read it), and the agency the event was first counted for. A range
-- correction is read by the agency of its scope too (corrections.scope_agency_id, no
-- row here needed). Nothing here is new: every row follows from the committed
-- corrections, marks and counted events, so the applier adds the rows of a correction
-- once it is committed, any writer holding the corrections lease adds those of a
-- committed correction that has none (store/corrections/sql.py FILL_AGENCIES), and the
-- statement below, the same one, adds those of the corrections committed before this
-- migration.
--
-- Sort key (agency_id, correction_seq, event_id): "the corrections and marks of this
-- agency".
CREATE TABLE IF NOT EXISTS metering.correction_agencies
(
    correction_seq  UInt64,
    event_id        UUID,
    agency_id       String
)
ENGINE = MergeTree
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
