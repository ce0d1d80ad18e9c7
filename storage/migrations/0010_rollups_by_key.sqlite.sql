-- Rollups by key as well as by model: usage_rollups and usage_rollup_latency gain key_id in
-- their primary key (one row per account, granularity, bucket, model and key), so the usage
-- API can filter and group them by key. Keep in step with 0010_rollups_by_key.postgres.sql.
--
-- Existing rows: rebuilt from request_logs, which they sum by construction (rows are only
-- ever added to both in one transaction, and neither is deleted), in one pass over
-- request_logs inside this migration's transaction. Logs written before migration 0003
-- (which had no rollups) are counted now too, as they always should have been. Each log's
-- histogram bin is omixa_latency_bin, storage/_common.py's latency_bin registered on the
-- migrating connection (storage/sqlite/connection.py: migrate). Times are microseconds since
-- the Unix epoch; buckets are floored (also before 1970).
DROP TABLE usage_rollups;
DROP TABLE usage_rollup_latency;

CREATE TABLE usage_rollups (
    account_id         TEXT NOT NULL,
    granularity        TEXT NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket_start       INTEGER NOT NULL,
    model              TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    requests           INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    client_closed      INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cost               INTEGER NOT NULL,
    latency_ms_sum     INTEGER NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model, key_id)
) STRICT;

CREATE TABLE usage_rollup_latency (
    account_id    TEXT NOT NULL,
    granularity   TEXT NOT NULL,
    bucket_start  INTEGER NOT NULL,
    model         TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    bin           INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model, key_id, bin)
) STRICT;

INSERT INTO usage_rollups (account_id, granularity, bucket_start, model, key_id, requests, errors,
                           client_closed, prompt_tokens, completion_tokens, reasoning_tokens,
                           cached_tokens, cost, latency_ms_sum)
SELECT account_id, g.granularity,
       created_at - ((created_at % g.width) + g.width) % g.width AS bucket_start,
       model, key_id, count(*),
       sum(status NOT IN ('ok', 'client_closed')), sum(status = 'client_closed'),
       sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens),
       sum(cost), sum(latency_ms)
FROM request_logs
CROSS JOIN (SELECT 'hour' AS granularity, 3600000000 AS width
            UNION ALL SELECT 'day', 86400000000) AS g
GROUP BY account_id, g.granularity, bucket_start, model, key_id;

INSERT INTO usage_rollup_latency (account_id, granularity, bucket_start, model, key_id, bin, count)
SELECT account_id, g.granularity,
       created_at - ((created_at % g.width) + g.width) % g.width AS bucket_start,
       model, key_id, omixa_latency_bin(latency_ms) AS bin, count(*)
FROM request_logs
CROSS JOIN (SELECT 'hour' AS granularity, 3600000000 AS width
            UNION ALL SELECT 'day', 86400000000) AS g
GROUP BY account_id, g.granularity, bucket_start, model, key_id, bin;

-- The usage API lists an account's logs of one key newest first (as it does by model, 0003).
CREATE INDEX request_logs_account_key_time ON request_logs (account_id, key_id, created_at DESC, id);
