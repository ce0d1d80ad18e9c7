-- Time to first token in the rollups: per (bucket, model, key), the sum of the requests'
-- ttft_ms and how many requests have one (a request that got no answer has none), so the
-- usage page can chart its mean over a month from the rollups rather than from every
-- request log. Keep in
-- step with 0013_rollup_ttft.sqlite.sql.
--
-- Existing rows: filled from request_logs, which the rollups sum by construction (both are
-- written in one transaction and neither is deleted), in this migration's transaction.
ALTER TABLE usage_rollups ADD COLUMN ttft_ms_sum BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN ttft_count BIGINT NOT NULL DEFAULT 0;

UPDATE usage_rollups AS r
SET ttft_ms_sum = t.ttft_ms_sum, ttft_count = t.ttft_count
FROM (
    SELECT account_id, g.granularity, date_trunc(g.granularity, created_at, 'UTC') AS bucket_start,
           model, key_id, sum(ttft_ms) AS ttft_ms_sum, count(ttft_ms) AS ttft_count
    FROM request_logs CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
    WHERE ttft_ms IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
) AS t
WHERE r.account_id = t.account_id AND r.granularity = t.granularity AND r.bucket_start = t.bucket_start
  AND r.model = t.model AND r.key_id = t.key_id;
