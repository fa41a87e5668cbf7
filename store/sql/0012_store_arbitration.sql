-- Writers of one store on any number of hosts: the store itself arbitrates between
-- them, with no lock outside it (docs/several-writers.md; the statements are in
-- store/ledger/sql.py and store/writers/sql.py).
--
-- The primitive is a conditional insert: INSERT ... SELECT ... WHERE <condition on the
-- table itself>, with an insert_deduplication_token. The condition is evaluated by the
-- server when the statement runs; two statements that both pass it at the same moment
-- carry the same token, and ClickHouse records a token under the table's lock (Keeper's
-- block ids on a cluster), so exactly one of them is stored. A client paused between
-- its decision and its insert cannot get around it: the server decides, not the client.

-- 1. The ledger is a log with one order: commit_seq. A flush commits by appending its
--    rows at commit_seq = head + 1, only if no row has that number or a later one yet
--    (token "commit-<n>"). A writer whose append finds the number taken reads what was
--    committed meanwhile and tries again at the new head, or refuses its flush when
--    another writer counted one of its partitions. flush_seq stays the flush's own
--    identity (the tag of its staged rows), now unique per writer: writer_no * 10^9 + n.
--    Rows committed before this migration keep commit_seq = flush_seq (the one order
--    the machine-local lock gave them).
ALTER TABLE metering.flush_ledger ADD COLUMN IF NOT EXISTS commit_seq UInt64 DEFAULT flush_seq;

ALTER TABLE metering.flush_ledger ADD COLUMN IF NOT EXISTS writer_no UInt32 DEFAULT 0;

ALTER TABLE metering.flush_ledger
    ADD INDEX IF NOT EXISTS commit_seq_minmax commit_seq TYPE minmax GRANULARITY 1;

ALTER TABLE metering.flush_ledger MATERIALIZE INDEX commit_seq_minmax SETTINGS mutations_sync = 2;

-- A writer of an older release appends without the condition and without a writer
-- number: refused, with this name in its error. (Its next start is refused earlier, by
-- the view metering.schema_migrations: store/migrations.py.)
ALTER TABLE metering.flush_ledger
    ADD CONSTRAINT IF NOT EXISTS only_registered_writers_commit__upgrade_older_govmeter_writers
    CHECK writer_no > 0;

-- 2. Every writer registers at start: writer_no = the last number + 1, claimed by a
--    conditional insert (token "writer-<n>"). The row says who it is, for every message
--    that has to name another writer.
-- Sort key (writer_no): "who is writer n" and "the last number".
CREATE TABLE IF NOT EXISTS metering.writers
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
ENGINE = MergeTree
ORDER BY writer_no
SETTINGS non_replicated_deduplication_window = 10000;

-- Heartbeats, on the server's clock (DEFAULT now64), so ages are compared with one
-- clock whatever the writers' hosts say. The last beat per writer is what matters:
-- ReplacingMergeTree keeps it after merges; readers take argMax by beat_at.
CREATE TABLE IF NOT EXISTS metering.writer_heartbeats
(
    writer_no   UInt32,
    beat_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    state       LowCardinality(String),
    partitions  Array(String),
    flushes     UInt64
)
ENGINE = ReplacingMergeTree(beat_at)
ORDER BY writer_no
TTL toDateTime(beat_at) + INTERVAL 400 DAY;

-- 3. Named leases, claimed the same way (token "lease-<name>-<term>"): the corrections
--    lease makes one writer at a time apply corrections, and rollup folds wait while it
--    is held (a rebuild deletes and re-inserts rollup keys). A lease is released by a
--    row with released = 1; one held by a writer whose heartbeats stopped is taken over
--    with the next term, and every write of a correction is conditional on its term.
-- Sort key (name, term, released): "the latest term of this lease, and is it released".
CREATE TABLE IF NOT EXISTS metering.store_leases
(
    name       LowCardinality(String),
    term       UInt64,
    writer_no  UInt32,
    released   UInt8,
    at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (name, term, released)
SETTINGS non_replicated_deduplication_window = 10000;

-- 4. A correction applies to the flushes committed up to the ledger head its applier
--    read after taking the lease (flushes committed later are folded after it, never
--    into its rebuild). Corrections committed before this migration applied to every
--    committed flush.
ALTER TABLE metering.corrections
    ADD COLUMN IF NOT EXISTS ledger_head UInt64 DEFAULT 18446744073709551615;
