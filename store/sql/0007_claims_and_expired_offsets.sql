-- Claims of `metering bill` runs: who records version N of a period.
--
-- ClickHouse has no transactions, so two `metering bill` runs for one period at once
-- could both read "latest version N-1" and both write version N (their lines under the
-- same run_id, two run rows). Before writing anything, a run inserts one claim row
-- for (period, version, attempt) with the insert deduplication token
-- "billing-claim:<period>:v<version>:a<attempt>": the table keeps the tokens of its
-- last blocks (non_replicated_deduplication_window; Keeper's block ids on a cluster),
-- and ClickHouse checks and records a token under the table's lock, so of two inserts
-- with the same token exactly one is stored, whatever their order. Each run then reads
-- the claim back: the run whose claim_id it finds writes the version; the other waits
-- for that run's row, or refuses naming it (metering/billing/runs.py).
--
-- claimed_at is the server's clock (DEFAULT now64), so every reader compares claim
-- ages with one clock. A claim whose run row never appeared (its process died) is
-- taken over by the next attempt once older than the lease (10 minutes by default).
--
-- Sort key (period, version, attempt): the only question asked is "who holds this".
CREATE TABLE IF NOT EXISTS metering.billing_claims
(
    period      String,
    version     UInt32,
    attempt     UInt32,
    claim_id    String,
    claimed_by  String,
    claimed_at  DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY (period, version, attempt)
SETTINGS non_replicated_deduplication_window = 10000;

-- Offsets the broker deleted (retention) before the worker counted them: a partition
-- whose earliest offset on the broker lies beyond the ledger's resume point. The worker
-- resumes at the earliest offset and writes one row per gap before it counts past it;
-- `metering reconcile` shows them. The same gap seen twice (at start and by the
-- pipeline) is one gap: readers group by (topic, partition, first_missing).
CREATE TABLE IF NOT EXISTS metering.expired_offsets
(
    topic          LowCardinality(String),
    partition      UInt32,
    first_missing  UInt64,
    resume_at      UInt64,
    detected_at    DateTime64(3, 'UTC'),
    worker         String
)
ENGINE = MergeTree
ORDER BY (topic, partition, first_missing);
