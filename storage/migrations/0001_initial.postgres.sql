-- Omixa schema v1 (PostgreSQL). Money: BIGINT nano-dollars. Times: TIMESTAMPTZ.
-- Keep in step with 0001_initial.sqlite.sql (same logical schema).

-- balance is what the account owns; locked the part held by pending holds.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    balance     BIGINT NOT NULL DEFAULT 0,
    locked      BIGINT NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT accounts_locked_within_balance CHECK (0 <= locked AND locked <= balance)
);

-- Keys are stored by hash only; prefix is the part shown to the owner.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    rpm         INTEGER CHECK (rpm IS NULL OR rpm >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_account ON api_keys (account_id);

-- Two-phase transfers: pending, then posted (charged <= amount) or voided (charged = 0).
CREATE TABLE holds (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id),
    request_id    TEXT NOT NULL,
    amount        BIGINT NOT NULL CHECK (amount > 0),
    charged       BIGINT NOT NULL DEFAULT 0 CHECK (0 <= charged AND charged <= amount),
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'voided')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL,
    finalized_at  TIMESTAMPTZ,
    CHECK ((state = 'pending') = (finalized_at IS NULL))
);
CREATE INDEX holds_state_expiry ON holds (state, expires_at);

-- Append-only. Every writer updates the account row before inserting its ledger rows, so
-- the row lock orders one account's ledger ids in commit order (last id = current state).
CREATE TABLE ledger (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    type           TEXT NOT NULL
                   CHECK (type IN ('top_up', 'hold', 'release', 'charge', 'refund', 'adjustment')),
    -- Positive; only an adjustment may carry a sign (a correction may take money away).
    amount         BIGINT NOT NULL CHECK (amount > 0 OR (type = 'adjustment' AND amount <> 0)),
    balance_after  BIGINT NOT NULL,
    locked_after   BIGINT NOT NULL,
    request_id     TEXT,
    hold_id        TEXT REFERENCES holds (id),
    note           TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account ON ledger (account_id, id);

-- One row per finished request (no foreign keys: written in batches, off the hot path).
CREATE TABLE request_logs (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    deployment         TEXT,
    region             TEXT,
    status             TEXT NOT NULL,
    stream             BOOLEAN NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    cost               BIGINT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    ttft_ms            BIGINT,
    created_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX request_logs_account_time ON request_logs (account_id, created_at DESC, id);
