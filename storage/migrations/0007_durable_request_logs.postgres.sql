-- A charged request's log is as durable as its charge. The settle or release that finalizes a
-- hold also stores the request's log in the hold row (holds.log: storage/_common.py's
-- log_to_json); the usage aggregator, once it has written the log to request_logs (and the
-- rollups), clears it. A process that dies between the two leaves the log here, and the
-- recovery of that process writes it (storage/postgres.py, _recover_instance).
ALTER TABLE holds ADD COLUMN log JSONB;
-- Only holds whose log is not written yet: a few per process in flight, found by process.
CREATE INDEX holds_unlogged_instance ON holds (instance_id) WHERE log IS NOT NULL;

-- omixa_wallet_ops as in migration 0005, with one more array: each finalizing step's log,
-- stored with the hold in the same statement. The lone settle (storage/postgres.py,
-- _SQL.FINALIZE_HOLD) sets the log the same way. The 11-argument version stays, so a process
-- of the previous release keeps working during a rolling upgrade, but as a call of this one
-- with no logs (below): one body to keep in step with the lone statements.
CREATE FUNCTION omixa_wallet_ops(
    p_kinds       TEXT[],         -- per step: 'hold', 'posted' or 'voided'
    p_ids         TEXT[],         -- the hold's id (a new one for 'hold')
    p_amounts     BIGINT[],       -- 'hold': the amount; 'posted': the charge; 'voided': 0
    p_accounts    TEXT[],         -- 'hold' only, as are the rest
    p_request_ids TEXT[],
    p_expires     TIMESTAMPTZ[],
    p_instances   TEXT[],
    p_keys        TEXT[],
    p_models      TEXT[],
    p_providers   TEXT[],
    p_streams     BOOLEAN[],
    p_logs        JSONB[]         -- 'posted' and 'voided': the request's log (or NULL)
) RETURNS TABLE (
    o_step        INTEGER,
    o_created_at  TIMESTAMPTZ,    -- 'hold': NULL when refused for want of funds
    o_expires_at  TIMESTAMPTZ,
    o_account_id  TEXT,           -- settles: the wallet after the step
    o_balance     BIGINT,
    o_locked      BIGINT,
    o_charged     BIGINT,
    o_released    BIGINT,
    o_final       BOOLEAN         -- settles: the hold was no longer pending; nothing changed
) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
        o_step := i;
        o_created_at := NULL; o_expires_at := NULL; o_account_id := NULL; o_balance := NULL;
        o_locked := NULL; o_charged := NULL; o_released := NULL; o_final := NULL;
        IF p_kinds[i] = 'hold' THEN
            -- One statement, as a lone hold was before: the conditional update is the
            -- arbiter; no row back means refused.
            WITH a AS (
                UPDATE accounts SET locked = locked + p_amounts[i]
                WHERE id = p_accounts[i] AND balance - locked >= p_amounts[i]
                  AND (p_keys[i] IS NULL OR NOT EXISTS (
                      SELECT 1 FROM api_keys WHERE id = p_keys[i] AND revoked_at IS NOT NULL))
                RETURNING balance, locked
            ), h AS (
                INSERT INTO holds (id, account_id, request_id, amount, expires_at, instance_id,
                                   key_id, model, provider, stream)
                SELECT p_ids[i], p_accounts[i], p_request_ids[i], p_amounts[i], p_expires[i],
                       p_instances[i], p_keys[i], p_models[i], p_providers[i], p_streams[i]
                FROM a
                RETURNING created_at, expires_at
            ), l AS (
                INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                    request_id, hold_id, created_at)
                SELECT p_accounts[i], 'hold', p_amounts[i], a.balance, a.locked,
                       p_request_ids[i], p_ids[i], h.created_at
                FROM a, h
            )
            SELECT h.created_at, h.expires_at INTO o_created_at, o_expires_at FROM h;
            IF NOT FOUND THEN
                IF p_keys[i] IS NOT NULL AND EXISTS (
                    SELECT 1 FROM api_keys WHERE id = p_keys[i] AND revoked_at IS NOT NULL
                ) THEN
                    RAISE EXCEPTION 'key % is revoked', quote_literal(p_keys[i]) USING ERRCODE = 'OX001', DETAIL = i::text;
                END IF;
                IF NOT EXISTS (SELECT 1 FROM accounts WHERE id = p_accounts[i]) THEN
                    RAISE EXCEPTION 'no account %', quote_literal(p_accounts[i]) USING ERRCODE = 'OX002', DETAIL = i::text;
                END IF;
            END IF;
            RETURN NEXT;  -- o_created_at NULL: refused for want of funds
            CONTINUE;
        END IF;
        -- Post or void, in one statement. Updating the hold locks it and re-checks
        -- state = 'pending' after any concurrent finalizer commits, so a hold is finalized
        -- exactly once. The ledger shows the wallet after each row: the charge first, then
        -- the release.
        WITH h AS (
            UPDATE holds
            SET state = p_kinds[i], charged = LEAST(p_amounts[i], amount), finalized_at = now(),
                log = p_logs[i]
            WHERE id = p_ids[i] AND state = 'pending'
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
        SELECT a.account_id, a.balance, a.locked, a.charged, a.released, false
        INTO o_account_id, o_balance, o_locked, o_charged, o_released, o_final
        FROM a;
        IF NOT FOUND THEN
            -- Not pending (or no such hold): report the wallet, change nothing.
            SELECT acc.id, acc.balance, acc.locked, 0, 0, true
            INTO o_account_id, o_balance, o_locked, o_charged, o_released, o_final
            FROM holds AS h JOIN accounts AS acc ON acc.id = h.account_id WHERE h.id = p_ids[i];
            IF NOT FOUND THEN
                RAISE EXCEPTION 'no hold %', quote_literal(p_ids[i]) USING ERRCODE = 'OX003', DETAIL = i::text;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION omixa_wallet_ops(
    p_kinds TEXT[], p_ids TEXT[], p_amounts BIGINT[], p_accounts TEXT[], p_request_ids TEXT[],
    p_expires TIMESTAMPTZ[], p_instances TEXT[], p_keys TEXT[], p_models TEXT[],
    p_providers TEXT[], p_streams BOOLEAN[]
) RETURNS TABLE (
    o_step INTEGER, o_created_at TIMESTAMPTZ, o_expires_at TIMESTAMPTZ, o_account_id TEXT,
    o_balance BIGINT, o_locked BIGINT, o_charged BIGINT, o_released BIGINT, o_final BOOLEAN
) LANGUAGE sql AS $$
    SELECT * FROM omixa_wallet_ops(p_kinds, p_ids, p_amounts, p_accounts, p_request_ids,
        p_expires, p_instances, p_keys, p_models, p_providers, p_streams, NULL::jsonb[])
$$;
