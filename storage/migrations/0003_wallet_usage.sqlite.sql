-- Omixa schema v3 (SQLite): idempotent top-ups, usage rollups, process instances and what a
-- hold needs to record an interrupted request. Keep in step with 0003_wallet_usage.postgres.sql.

-- The first outcome of each (account, Idempotency-Key): a retry returns that ledger row.
CREATE TABLE top_up_requests (
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    idempotency_key  TEXT NOT NULL,
    amount           INTEGER NOT NULL CHECK (amount > 0),
    ledger_id        INTEGER NOT NULL REFERENCES ledger (id),
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (account_id, idempotency_key)
) STRICT;

-- Hourly and daily sums of request_logs, upserted in the transaction that inserts the logs.
-- bucket_start: the UTC hour or day the requests' created_at falls in.
CREATE TABLE usage_rollups (
    account_id         TEXT NOT NULL,
    granularity        TEXT NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket_start       INTEGER NOT NULL,
    model              TEXT NOT NULL,
    requests           INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    client_closed      INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cost               INTEGER NOT NULL,
    latency_ms_sum     INTEGER NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model)
) STRICT;

-- Latency histogram per rollup row: count of requests per bin (bin upper bounds grow by 10%).
CREATE TABLE usage_rollup_latency (
    account_id    TEXT NOT NULL,
    granularity   TEXT NOT NULL,
    bucket_start  INTEGER NOT NULL,
    model         TEXT NOT NULL,
    bin           INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model, bin)
) STRICT;

-- Running gateway processes; a process that died leaves its row and its pending holds.
CREATE TABLE instances (
    id            TEXT NOT NULL PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
) STRICT;

-- Who holds a pending hold, and what to record if that process dies before settling it.
ALTER TABLE holds ADD COLUMN instance_id TEXT;
ALTER TABLE holds ADD COLUMN key_id TEXT;
ALTER TABLE holds ADD COLUMN model TEXT;
ALTER TABLE holds ADD COLUMN provider TEXT;
ALTER TABLE holds ADD COLUMN stream INTEGER CHECK (stream IS NULL OR stream IN (0, 1));
CREATE INDEX holds_pending_instance ON holds (instance_id) WHERE state = 'pending';

-- Transactions are listed newest first per account; request logs are filtered by model.
CREATE INDEX request_logs_account_model_time ON request_logs (account_id, model, created_at DESC, id);
