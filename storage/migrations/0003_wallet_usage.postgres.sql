-- Omixa schema v3 (PostgreSQL): idempotent top-ups, usage rollups, process instances and what a
-- hold needs to record an interrupted request. Keep in step with 0003_wallet_usage.sqlite.sql.

-- The first outcome of each (account, Idempotency-Key): a retry returns that ledger row.
CREATE TABLE top_up_requests (
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    idempotency_key  TEXT NOT NULL,
    amount           BIGINT NOT NULL CHECK (amount > 0),
    -- Deferred: the key is claimed first (0), then pointed at the new row before commit.
    ledger_id        BIGINT NOT NULL REFERENCES ledger (id) DEFERRABLE INITIALLY DEFERRED,
    created_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, idempotency_key)
);

-- Hourly and daily sums of request_logs, upserted in the transaction that inserts the logs.
-- bucket_start: the UTC hour or day the requests' created_at falls in.
CREATE TABLE usage_rollups (
    account_id         TEXT NOT NULL,
    granularity        TEXT NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket_start       TIMESTAMPTZ NOT NULL,
    model              TEXT NOT NULL,
    requests           BIGINT NOT NULL,
    errors             BIGINT NOT NULL,
    client_closed      BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    cost               BIGINT NOT NULL,
    latency_ms_sum     BIGINT NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model)
);

-- Latency histogram per rollup row: count of requests per bin (bin upper bounds grow by 10%).
CREATE TABLE usage_rollup_latency (
    account_id    TEXT NOT NULL,
    granularity   TEXT NOT NULL,
    bucket_start  TIMESTAMPTZ NOT NULL,
    model         TEXT NOT NULL,
    bin           INTEGER NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (account_id, granularity, bucket_start, model, bin)
);

-- Running gateway processes; a process that died leaves its row and its pending holds.
CREATE TABLE instances (
    id            TEXT NOT NULL PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);

-- Who holds a pending hold, and what to record if that process dies before settling it.
ALTER TABLE holds ADD COLUMN instance_id TEXT;
ALTER TABLE holds ADD COLUMN key_id TEXT;
ALTER TABLE holds ADD COLUMN model TEXT;
ALTER TABLE holds ADD COLUMN provider TEXT;
ALTER TABLE holds ADD COLUMN stream BOOLEAN;
CREATE INDEX holds_pending_instance ON holds (instance_id) WHERE state = 'pending';

-- Transactions are listed newest first per account; request logs are filtered by model.
CREATE INDEX request_logs_account_model_time ON request_logs (account_id, model, created_at DESC, id);
