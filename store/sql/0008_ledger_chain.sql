-- Tamper evidence: each flush's ledger rows carry the sha256 of what the flush counted
-- and rejected (content_sha256) and that hash chained to the previous flush's
-- (chain_sha256 = sha256(previous chain_sha256 || content_sha256)), the same on every
-- row of the flush. The canonical content is defined in store/ledger/chain.py and can
-- be recomputed from counted_events, rejections_log and flush_ledger alone
-- (`metering verify`). Flushes committed before this migration keep '' (not chained).
ALTER TABLE metering.flush_ledger ADD COLUMN IF NOT EXISTS content_sha256 String DEFAULT '';

ALTER TABLE metering.flush_ledger ADD COLUMN IF NOT EXISTS chain_sha256 String DEFAULT '';
