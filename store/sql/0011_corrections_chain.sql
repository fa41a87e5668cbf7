-- Tamper evidence for corrections (store/corrections/chain.py): each correction row
-- carries the sha256 of its decision and of every event it marked, and the sha256 of
-- that chained to the previous correction's. Written with the commit row (step b), in
-- the same single insert; `metering verify` recomputes both. Corrections committed
-- before this migration carry '' and are reported as not chained.
ALTER TABLE metering.corrections
    ADD COLUMN IF NOT EXISTS content_sha256 String DEFAULT '',
    ADD COLUMN IF NOT EXISTS chain_sha256 String DEFAULT '';
