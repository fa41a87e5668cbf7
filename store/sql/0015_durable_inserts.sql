-- What the ledger vouches for is on disk before the ledger says so. With these
-- settings an insert returns only after its part's files and directory are fsynced
-- (ClickHouse does not fsync parts by default: a power loss could keep the ledger's
-- newest part and lose the counted events staged before it). The staging tables are
-- inserted before the commit, so a durable commit implies durable staged rows; the
-- marks likewise before their correction's commit. Rollups and billing tables are not
-- synced: a writer's start-up check rebuilds rollups that differ from the counted
-- events (`streams.corrections_lease.rebuild_rollups_if_short`), and a bill is taken
-- again. Measured cost: README "Performance" (durable inserts).
ALTER TABLE metering.flush_ledger
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.counted_events
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.rejections_log
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.flush_applied
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.corrections
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.correction_marks
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;

ALTER TABLE metering.corrections_applied
    MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
