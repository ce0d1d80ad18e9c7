-- Rollups by key as well as by model: usage_rollups and usage_rollup_latency gain key_id in
-- their primary key (one row per account, granularity, bucket, model and key), so the usage
-- API can filter and group them by key. Keep in step with 0010_rollups_by_key.sqlite.sql.
--
-- Existing rows: rebuilt from request_logs, which they sum by construction (rows are only
-- ever added to both in one transaction, and neither is deleted), in one pass over
-- request_logs inside this migration's transaction (the tables are locked meanwhile: writes
-- of request logs wait, and the usage aggregator keeps its batches until they can go). Logs
-- written before migration 0003 (which had no rollups) are counted now too, as they always
-- should have been. Each log's histogram bin is omixa_latency_bin below, the same steps as
-- storage/_common.py's latency_bin (both bound a bin by ceil(pow(1.1, b)) of C's pow, and
-- correct the first guess both ways, so they agree); it is dropped at the end.
CREATE FUNCTION omixa_latency_bin(ms bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    b integer;
BEGIN
    IF ms <= 1 THEN
        RETURN 0;
    END IF;
    b := ceil(ln(ms::float8) / ln(1.1::float8))::integer;
    WHILE ceil(power(1.1::float8, b::float8)) < ms LOOP
        b := b + 1;
    END LOOP;
    WHILE b > 0 AND ceil(power(1.1::float8, (b - 1)::float8)) >= ms LOOP
        b := b - 1;
    END LOOP;
    RETURN b;
END
$$;

DROP TABLE usage_rollups;
DROP TABLE usage_rollup_latency;

CREATE TABLE usage_rollups (
    account_id         TEXT NOT NULL,
    granularity        TEXT NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket_start       TIMESTAMPTZ NOT NULL,
    model              TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    requests           BIGINT NOT NULL,
    errors             BIGINT NOT NULL,
    client_closed      BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    cost               BIGINT NOT NULL,
    latency_ms_sum     BIGINT NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model, key_id)
);

CREATE TABLE usage_rollup_latency (
    account_id    TEXT NOT NULL,
    granularity   TEXT NOT NULL,
    bucket_start  TIMESTAMPTZ NOT NULL,
    model         TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    bin           INTEGER NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model, key_id, bin)
);

INSERT INTO usage_rollups (account_id, granularity, bucket_start, model, key_id, requests, errors,
                           client_closed, prompt_tokens, completion_tokens, reasoning_tokens,
                           cached_tokens, cost, latency_ms_sum)
SELECT account_id, g.granularity, date_trunc(g.granularity, created_at, 'UTC'), model, key_id,
       count(*),
       count(*) FILTER (WHERE status NOT IN ('ok', 'client_closed')),
       count(*) FILTER (WHERE status = 'client_closed'),
       sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cached_tokens),
       sum(cost), sum(latency_ms)
FROM request_logs CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO usage_rollup_latency (account_id, granularity, bucket_start, model, key_id, bin, count)
SELECT account_id, g.granularity, date_trunc(g.granularity, created_at, 'UTC'), model, key_id,
       omixa_latency_bin(latency_ms), count(*)
FROM request_logs CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
GROUP BY 1, 2, 3, 4, 5, 6;

DROP FUNCTION omixa_latency_bin(bigint);

-- The usage API lists an account's logs of one key newest first (as it does by model, 0003).
CREATE INDEX request_logs_account_key_time ON request_logs (account_id, key_id, created_at DESC, id);
