-- Omixa schema v1 (SQLite). Money: INTEGER nano-dollars. Times: INTEGER microseconds since
-- the Unix epoch, UTC. Keep in step with 0001_initial.postgres.sql (same logical schema).

-- balance is what the account owns; locked the part held by pending holds.
CREATE TABLE accounts (
    id          TEXT NOT NULL PRIMARY KEY,
    email       TEXT NOT NULL,
    balance     INTEGER NOT NULL DEFAULT 0,
    locked      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    CHECK (0 <= locked AND locked <= balance)
) STRICT;

-- Keys are stored by hash only; prefix is the part shown to the owner.
CREATE TABLE api_keys (
    id          TEXT NOT NULL PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    rpm         INTEGER CHECK (rpm IS NULL OR rpm >= 0),
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX api_keys_account ON api_keys (account_id);

-- Two-phase transfers: pending, then posted (charged <= amount) or voided (charged = 0).
CREATE TABLE holds (
    id            TEXT NOT NULL PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id),
    request_id    TEXT NOT NULL,
    amount        INTEGER NOT NULL CHECK (amount > 0),
    charged       INTEGER NOT NULL DEFAULT 0 CHECK (0 <= charged AND charged <= amount),
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'voided')),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    finalized_at  INTEGER,
    CHECK ((state = 'pending') = (finalized_at IS NULL))
) STRICT;
CREATE INDEX holds_state_expiry ON holds (state, expires_at);

-- Append-only; AUTOINCREMENT so an id is never reused (the last row per account is the
-- one with the highest id).
CREATE TABLE ledger (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    type           TEXT NOT NULL
                   CHECK (type IN ('top_up', 'hold', 'release', 'charge', 'refund', 'adjustment')),
    -- Positive; only an adjustment may carry a sign (a correction may take money away).
    amount         INTEGER NOT NULL CHECK (amount > 0 OR (type = 'adjustment' AND amount <> 0)),
    balance_after  INTEGER NOT NULL,
    locked_after   INTEGER NOT NULL,
    request_id     TEXT,
    hold_id        TEXT REFERENCES holds (id),
    note           TEXT,
    created_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX ledger_account ON ledger (account_id, id);

-- One row per finished request (no foreign keys: written in batches, off the hot path).
CREATE TABLE request_logs (
    id                 TEXT NOT NULL PRIMARY KEY,
    account_id         TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    deployment         TEXT,
    region             TEXT,
    status             TEXT NOT NULL,
    stream             INTEGER NOT NULL CHECK (stream IN (0, 1)),
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cost               INTEGER NOT NULL,
    latency_ms         INTEGER NOT NULL,
    ttft_ms            INTEGER,
    created_at         INTEGER NOT NULL
) STRICT;
CREATE INDEX request_logs_account_time ON request_logs (account_id, created_at DESC, id);
