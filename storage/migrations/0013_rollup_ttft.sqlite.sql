-- Time to first token in the rollups: per (bucket, model, key), the sum of the requests'
-- ttft_ms and how many requests have one (a request that got no answer has none), so the
-- usage page can chart its mean over a month from the rollups rather than from every
-- request log. Keep in
-- step with 0013_rollup_ttft.postgres.sql.
--
-- Existing rows: filled from request_logs, which the rollups sum by construction (both are
-- written in one transaction and neither is deleted), in this migration's transaction. Times
-- are microseconds since the Unix epoch; buckets are floored (as in 0010).
ALTER TABLE usage_rollups ADD COLUMN ttft_ms_sum INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN ttft_count INTEGER NOT NULL DEFAULT 0;

UPDATE usage_rollups
SET (ttft_ms_sum, ttft_count) = (
    SELECT coalesce(sum(l.ttft_ms), 0), count(l.ttft_ms)
    FROM request_logs AS l
    WHERE l.account_id = usage_rollups.account_id AND l.model = usage_rollups.model
      AND l.key_id = usage_rollups.key_id AND l.ttft_ms IS NOT NULL
      AND l.created_at >= usage_rollups.bucket_start
      AND l.created_at < usage_rollups.bucket_start
                         + CASE usage_rollups.granularity WHEN 'hour' THEN 3600000000 ELSE 86400000000 END
);
