-- Completeness certificates of `metering certify`: one row per certificate issued, its
-- body as printed (JSON or HTML) and the sha256 of that body. Sort key
-- (period, created_at): "every certificate of this period, in order".
CREATE TABLE IF NOT EXISTS metering.certificates
(
    period      String,
    created_at  DateTime64(3, 'UTC'),
    format      LowCardinality(String),
    sha256      String,
    body        String
)
ENGINE = MergeTree
ORDER BY (period, created_at);
