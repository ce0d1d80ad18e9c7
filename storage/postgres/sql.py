"""The PostgreSQL backend's SQL text, one statement per name.

The hot paths (a lone hold, settle or void, a top-up, a flush of request logs) are each one
statement of data-modifying CTEs: one round trip, one implicit transaction. Column lists and
selects that SQLite reads alike come from :mod:`storage._common`.
"""

from __future__ import annotations

from omixa.storage._common import (
    KEY_COLUMNS,
    LEDGER_SELECT,
    PENDING_HOLD_COLUMNS,
    REQUEST_LOG_COLUMNS,
    REQUEST_LOG_SELECT,
    ROLLUP_KEY,
    ROLLUP_LATENCY_SELECT,
    ROLLUP_SELECT,
    ROLLUP_SUMS,
    SESSION_KEY_SELECT,
    STORED_ITEM_SELECT,
    STORED_RESPONSE_SELECT,
    UNLOGGED_HOLD_COLUMNS,
)


class SQL:
    """The statements, in one place. asyncpg prepares and caches each per connection."""

    CREATE_SCHEMA_MIGRATIONS = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version     INTEGER PRIMARY KEY,
            name        TEXT NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now())"""
    INSERT_ACCOUNT = "INSERT INTO accounts (id, email) VALUES ($1, $2) RETURNING created_at"
    GET_ACCOUNT = "SELECT id, email, created_at FROM accounts WHERE id = $1"
    ACCOUNT_EXISTS = "SELECT 1 FROM accounts WHERE id = $1"
    KEY_REVOKED = "SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1"
    # Insert only if the account exists: no row back means NotFound, without relying on
    # catching a foreign-key violation.
    INSERT_API_KEY = """
        INSERT INTO api_keys (id, account_id, key_hash, prefix, rpm, tpm, signature_required,
                              signing_secret_enc)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $2)
        RETURNING created_at"""
    FIND_API_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
    LIST_API_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at DESC, id DESC"
    # SET expressions read the row's old values: the replaced secret becomes the previous one
    # when there is a grace period ($3), else it is dropped.
    ROTATE_SIGNING_SECRET = f"""
        UPDATE api_keys SET
            previous_secret_enc = CASE WHEN $3::timestamptz IS NULL THEN NULL
                                       ELSE signing_secret_enc END,
            previous_secret_expires_at = CASE WHEN $3::timestamptz IS NULL
                                              OR signing_secret_enc IS NULL THEN NULL ELSE $3 END,
            signing_secret_enc = $2
        WHERE id = $1
        RETURNING {KEY_COLUMNS}"""
    SIGNING_SUMMARY = """
        SELECT (SELECT count(*) FROM api_keys
                WHERE signature_required AND revoked_at IS NULL) AS required_keys,
               (SELECT signing_secret_enc FROM api_keys
                WHERE signing_secret_enc IS NOT NULL AND revoked_at IS NULL
                ORDER BY created_at DESC LIMIT 1) AS sample"""
    REVOKE_API_KEY = """
        UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
        RETURNING id"""
    # One statement: forget expired sessions, then add this one (none if the key is unknown).
    CREATE_DASHBOARD_SESSION = """
        WITH expired AS (DELETE FROM dashboard_sessions WHERE expires_at <= now())
        INSERT INTO dashboard_sessions (id, key_id, expires_at)
        SELECT $1, id, $3 FROM api_keys WHERE id = $2
        RETURNING id"""
    DASHBOARD_SESSION_KEY = f"{SESSION_KEY_SELECT} WHERE s.id = $1 AND s.expires_at > now()"
    END_DASHBOARD_SESSION = "DELETE FROM dashboard_sessions WHERE id = $1"
    CREATE_ADMIN_SESSION = """
        WITH expired AS (DELETE FROM admin_sessions WHERE expires_at <= now())
        INSERT INTO admin_sessions (id, expires_at) VALUES ($1, $2)"""
    ADMIN_SESSION_LIVE = "SELECT 1 FROM admin_sessions WHERE id = $1 AND expires_at > now()"
    END_ADMIN_SESSION = "DELETE FROM admin_sessions WHERE id = $1"
    # Each key's newest log: one seek into request_logs_account_key_time per key.
    KEY_LAST_USED = """
        SELECT k.id, (SELECT r.created_at FROM request_logs AS r
                      WHERE r.account_id = k.account_id AND r.key_id = k.id
                      ORDER BY r.created_at DESC LIMIT 1) AS last_used
        FROM api_keys AS k WHERE k.account_id = $1"""
    # $1: a LIKE pattern or NULL; $2: the id of the last account of the previous page or NULL.
    LIST_ACCOUNTS = """
        SELECT id, email, created_at, balance, locked FROM accounts
        WHERE ($1::text IS NULL OR lower(email) LIKE lower($1) ESCAPE '\\')
          AND ($2::text IS NULL OR (created_at, id) < (SELECT created_at, id FROM accounts WHERE id = $2))
        ORDER BY created_at DESC, id DESC LIMIT $3"""
    # One statement: the response, then its items (none when it was there already).
    SAVE_STORED_RESPONSE = """
        WITH r AS (
            INSERT INTO stored_responses
                (id, account_id, key_id, model, deployment, endpoint, context_tokens, output_tokens, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING
            RETURNING id, account_id
        )
        INSERT INTO stored_response_items (id, response_id, account_id)
        SELECT item, r.id, r.account_id FROM r, unnest($10::text[]) AS item
        ON CONFLICT (id) DO NOTHING"""
    FIND_STORED_RESPONSE = f"{STORED_RESPONSE_SELECT} WHERE r.id = $1 AND r.account_id = $2"
    FIND_STORED_ITEMS = f"{STORED_ITEM_SELECT} WHERE i.id = ANY($1::text[]) AND i.account_id = $2"
    DELETE_STORED_RESPONSE = "DELETE FROM stored_responses WHERE id = $1 AND account_id = $2 RETURNING id"
    GET_WALLET = "SELECT balance, locked FROM accounts WHERE id = $1"
    TOP_UP = """
        WITH a AS (
            UPDATE accounts SET balance = balance + $2 WHERE id = $1
            RETURNING balance, locked
        ), l AS (
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after, note)
            SELECT $1, 'top_up', $2, balance, locked, $3 FROM a
        )
        SELECT balance, locked FROM a"""
    # A lone hold and a lone settle or void. omixa_wallet_ops (migration 0005) runs these
    # same two statements for each step of a batch: a change to one is a change to both
    # (and a new migration), and to SQLite's steps (storage/sqlite/wallet.py), which are
    # Python for want of data-modifying CTEs.
    # The conditional update is the arbiter across processes: it locks the funds only if
    # they are available. No row back: refused (or no such account).
    CREATE_HOLD = """
        WITH a AS (
            UPDATE accounts SET locked = locked + $3
            WHERE id = $2 AND balance - locked >= $3
              AND ($7::text IS NULL OR NOT EXISTS (
                  SELECT 1 FROM api_keys WHERE id = $7 AND revoked_at IS NOT NULL))
            RETURNING balance, locked
        ), h AS (
            INSERT INTO holds (id, account_id, request_id, amount, expires_at, instance_id,
                               key_id, model, provider, stream)
            SELECT $1, $2, $4, $3, $5, $6, $7, $8, $9, $10 FROM a
            RETURNING created_at, expires_at
        ), l AS (
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id, created_at)
            SELECT $2, 'hold', $3, a.balance, a.locked, $4, $1, h.created_at FROM a, h
        )
        SELECT created_at, expires_at FROM h"""
    # Post ($3 = 'posted') or void ($3 = 'voided', $2 = 0) in one statement, keeping the
    # request's log ($4, JSON) with the hold until the usage aggregator has written it
    # (migration 0007). The UPDATE of the hold locks it and re-checks state = 'pending' after
    # any concurrent finalizer commits, so a hold is finalized exactly once. Ledger rows show
    # the wallet after each row: the charge first, then the release.
    FINALIZE_HOLD = """
        WITH h AS (
            UPDATE holds
            SET state = $3, charged = LEAST($2::bigint, amount), finalized_at = now(),
                log = $4::jsonb
            WHERE id = $1 AND state = 'pending'
            RETURNING id, account_id, request_id, amount, charged
        ), a AS (
            UPDATE accounts AS acc
            SET balance = acc.balance - h.charged, locked = acc.locked - h.amount
            FROM h WHERE acc.id = h.account_id
            RETURNING acc.id AS account_id, acc.balance, acc.locked, h.id AS hold_id,
                      h.request_id, h.charged, h.amount - h.charged AS released
        ), l AS (
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id)
            SELECT a.account_id, e.type, e.amount, a.balance, e.locked_after,
                   a.request_id, a.hold_id
            FROM a CROSS JOIN LATERAL (VALUES
                (1, 'charge', a.charged, a.locked + a.released),
                (2, 'release', a.released, a.locked)
            ) AS e (ord, type, amount, locked_after)
            WHERE e.amount > 0
            ORDER BY e.ord
        )
        SELECT account_id, balance, locked, charged, released FROM a"""
    HOLD_WALLET = """
        SELECT a.id AS account_id, a.balance, a.locked
        FROM holds h JOIN accounts a ON a.id = h.account_id WHERE h.id = $1"""
    # A batch of holds and settles, one array element per step (migrations 0005 and 0007).
    WALLET_OPS = """
        SELECT * FROM omixa_wallet_ops($1::text[], $2::text[], $3::bigint[], $4::text[],
            $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::boolean[], $12::jsonb[]) ORDER BY o_step"""
    LOCK_EXPIRED_HOLDS = """
        SELECT id, account_id, request_id, amount FROM holds
        WHERE state = 'pending' AND expires_at < $1
        ORDER BY account_id, id
        FOR UPDATE SKIP LOCKED"""
    RELEASE_LOCKED = """
        UPDATE accounts SET locked = locked - $2 WHERE id = $1 RETURNING balance, locked"""
    INSERT_RELEASE = """
        INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                            request_id, hold_id)
        VALUES ($1, 'release', $2, $3, $4, $5, $6)"""
    VOID_HOLDS = """
        UPDATE holds SET state = 'voided', finalized_at = now() WHERE id = ANY($1::text[])"""
    LEDGER_ENTRIES = f"{LEDGER_SELECT} WHERE account_id = $1 ORDER BY id"
    PENDING_HOLDS = (
        "SELECT count(*) AS pending, sum(amount)::bigint AS locked, min(created_at) AS oldest"
        " FROM holds WHERE state = 'pending'"
    )
    LIST_LEDGER = f"""{LEDGER_SELECT}
        WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"""
    GET_LEDGER_ENTRY = f"{LEDGER_SELECT} WHERE id = $1 AND account_id = $2"
    REQUEST_LEDGER = f"{LEDGER_SELECT} WHERE request_id = $2 AND account_id = $1 ORDER BY id"
    # The last row before since ($2), then the last of each bucket ($4 seconds) in [since, until).
    # The row before $2 is one seek down ledger_account_time (migration 0014).
    LEDGER_BALANCES = f"""{LEDGER_SELECT} WHERE id IN (
        SELECT (SELECT id FROM ledger WHERE account_id = $1 AND created_at < $2
                ORDER BY created_at DESC, id DESC LIMIT 1)
        UNION ALL
        SELECT max(id) FROM ledger WHERE account_id = $1 AND created_at >= $2 AND created_at < $3
        GROUP BY floor(extract(epoch FROM created_at) / $4)
    ) ORDER BY id"""
    CLAIM_TOP_UP_KEY = """
        INSERT INTO top_up_requests (account_id, idempotency_key, amount, ledger_id, created_at)
        SELECT $1, $2, $3, 0, now() WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1)
        ON CONFLICT (account_id, idempotency_key) DO NOTHING
        RETURNING 1"""
    TOP_UP_KEY = """
        SELECT amount, ledger_id FROM top_up_requests
        WHERE account_id = $1 AND idempotency_key = $2"""
    SET_TOP_UP_LEDGER = """
        UPDATE top_up_requests SET ledger_id = $3 WHERE account_id = $1 AND idempotency_key = $2"""
    CREDIT = """
        WITH a AS (
            UPDATE accounts SET balance = balance + $2 WHERE id = $1
            RETURNING balance, locked
        )
        INSERT INTO ledger (account_id, type, amount, balance_after, locked_after, note)
        SELECT $1, 'top_up', $2, balance, locked, $3 FROM a
        RETURNING id, type, amount, balance_after, locked_after, locked_after AS locked,
                  request_id, hold_id, created_at"""
    _LOG_TYPES = (
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "boolean",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "text",  # upstream_request_id
        "text",  # error_message
        "timestamptz",
    )
    _LOG_INPUT = ", ".join(f"${i}::{t}[]" for i, t in enumerate((*_LOG_TYPES, "integer"), 1))
    _HOLD_IDS = f"${len(_LOG_TYPES) + 2}::text[]"  # the holds whose copies of the logs go
    _LOG_COLUMNS = ", ".join(REQUEST_LOG_COLUMNS)
    _ROLLUP_KEY = ", ".join(ROLLUP_KEY)
    # The logs that were new (not there already) add to the hourly and daily rollups (per
    # model and key) and their latency histograms, in this statement: the same sums SQLite makes in Python
    # (storage/_common.py: rollup_deltas), kept here because a flush is then one statement
    # (see usage.insert_request_logs). The holds that kept a copy of a log forget it
    # (migration 0007).
    INSERT_REQUEST_LOGS = f"""
        WITH cleared AS (
            UPDATE holds SET log = NULL WHERE id = ANY({_HOLD_IDS}) AND log IS NOT NULL
        ), given AS (
            SELECT * FROM unnest({_LOG_INPUT}) AS t ({_LOG_COLUMNS}, bin)
        ), inserted AS (
            INSERT INTO request_logs ({_LOG_COLUMNS}) SELECT {_LOG_COLUMNS} FROM given
            ON CONFLICT (id) DO NOTHING RETURNING id
        ), new AS (
            SELECT given.*, g.granularity,
                   date_trunc(g.granularity, given.created_at, 'UTC') AS bucket_start
            FROM given JOIN inserted USING (id)
            CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
        ), rollups AS (
            INSERT INTO usage_rollups ({_ROLLUP_KEY}, {", ".join(ROLLUP_SUMS)})
            SELECT {_ROLLUP_KEY}, count(*),
                   count(*) FILTER (WHERE status NOT IN ('ok', 'client_closed')),
                   count(*) FILTER (WHERE status = 'client_closed'),
                   sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens),
                   sum(cached_tokens), sum(cost), sum(latency_ms),
                   coalesce(sum(ttft_ms), 0), count(ttft_ms)
            FROM new GROUP BY {_ROLLUP_KEY}
            ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET
                {", ".join(f"{c} = usage_rollups.{c} + EXCLUDED.{c}" for c in ROLLUP_SUMS)}
        )
        INSERT INTO usage_rollup_latency ({_ROLLUP_KEY}, bin, count)
        SELECT {_ROLLUP_KEY}, bin, count(*) FROM new GROUP BY {_ROLLUP_KEY}, bin
        ON CONFLICT ({_ROLLUP_KEY}, bin) DO UPDATE SET count = usage_rollup_latency.count + EXCLUDED.count"""
    _ROLLUP_WHERE = """
        WHERE account_id = $1 AND granularity = $2 AND bucket_start >= $3 AND bucket_start < $4
          AND ($5::text IS NULL OR model = $5) AND ($6::text IS NULL OR key_id = $6)"""
    ROLLUPS = f"{ROLLUP_SELECT} {_ROLLUP_WHERE} ORDER BY bucket_start, model, key_id"
    ROLLUP_LATENCY = f"{ROLLUP_LATENCY_SELECT} {_ROLLUP_WHERE}"
    # xmax <> 0: the row existed and was updated (an insert has xmax 0).
    UPSERT_INSTANCE = """
        INSERT INTO instances (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, now())
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
        RETURNING xmax <> 0"""
    LIST_INSTANCES = """
        SELECT id, host, pid, started_at, heartbeat_at,
               EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS heartbeat_age
        FROM instances ORDER BY id"""
    INSTANCE_HOLDS = f"""
        SELECT {PENDING_HOLD_COLUMNS}
        FROM holds WHERE instance_id = $1 AND state = 'pending' ORDER BY created_at, id"""
    EXISTING_LOGS = "SELECT id FROM request_logs WHERE id = ANY($1::text[])"
    INSTANCE_UNLOGGED = f"""
        SELECT {UNLOGGED_HOLD_COLUMNS}
        FROM holds WHERE instance_id = $1 AND log IS NOT NULL"""
    LOCK_INSTANCE_AGE = """
        SELECT EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 FROM instances WHERE id = $1
        FOR UPDATE"""
    DELETE_INSTANCE = "DELETE FROM instances WHERE id = $1"
    GET_REQUEST_LOG = f"{REQUEST_LOG_SELECT} WHERE id = $1"
