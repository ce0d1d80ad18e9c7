-- A wallet actor's batch of holds and settles in one statement: one round trip and one
-- commit, however many steps (storage/postgres.py, apply_wallet_ops). Each step does what
-- the single statements it replaces did: a hold is the conditional update of the account
-- (the arbiter across processes), the hold row and its ledger row; a settle or void updates
-- the hold only while it is pending (exactly once), then the account, then writes the charge
-- and release ledger rows. One result row per step, in step order.
--
-- A step that cannot be served raises, so the whole batch rolls back (the caller then serves
-- the steps one by one): SQLSTATE OX001 a revoked key, OX002 an unknown account, OX003 an
-- unknown hold; DETAIL is the step's number (from 1).
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
    p_streams     BOOLEAN[]
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
DECLARE
    v_hold RECORD;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
        o_step := i;
        o_created_at := NULL; o_expires_at := NULL; o_account_id := NULL; o_balance := NULL;
        o_locked := NULL; o_charged := NULL; o_released := NULL; o_final := NULL;
        IF p_kinds[i] = 'hold' THEN
            UPDATE accounts AS a SET locked = a.locked + p_amounts[i]
            WHERE a.id = p_accounts[i] AND a.balance - a.locked >= p_amounts[i]
              AND (p_keys[i] IS NULL OR NOT EXISTS (
                  SELECT 1 FROM api_keys AS k WHERE k.id = p_keys[i] AND k.revoked_at IS NOT NULL))
            RETURNING a.balance, a.locked INTO o_balance, o_locked;
            IF NOT FOUND THEN
                IF p_keys[i] IS NOT NULL AND EXISTS (
                    SELECT 1 FROM api_keys AS k WHERE k.id = p_keys[i] AND k.revoked_at IS NOT NULL
                ) THEN
                    RAISE EXCEPTION 'key % is revoked', p_keys[i] USING ERRCODE = 'OX001', DETAIL = i::text;
                END IF;
                IF NOT EXISTS (SELECT 1 FROM accounts AS a WHERE a.id = p_accounts[i]) THEN
                    RAISE EXCEPTION 'no account %', p_accounts[i] USING ERRCODE = 'OX002', DETAIL = i::text;
                END IF;
                RETURN NEXT;  -- refused for want of funds
                CONTINUE;
            END IF;
            INSERT INTO holds (id, account_id, request_id, amount, expires_at, instance_id,
                               key_id, model, provider, stream)
            VALUES (p_ids[i], p_accounts[i], p_request_ids[i], p_amounts[i], p_expires[i],
                    p_instances[i], p_keys[i], p_models[i], p_providers[i], p_streams[i])
            RETURNING holds.created_at, holds.expires_at INTO o_created_at, o_expires_at;
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id, created_at)
            VALUES (p_accounts[i], 'hold', p_amounts[i], o_balance, o_locked,
                    p_request_ids[i], p_ids[i], o_created_at);
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- Post or void. Updating the hold locks it and re-checks state = 'pending' after any
        -- concurrent finalizer commits, so a hold is finalized exactly once.
        UPDATE holds AS h
        SET state = p_kinds[i], charged = LEAST(p_amounts[i], h.amount), finalized_at = now()
        WHERE h.id = p_ids[i] AND h.state = 'pending'
        RETURNING h.account_id, h.request_id, h.amount, h.charged INTO v_hold;
        IF NOT FOUND THEN
            SELECT a.id, a.balance, a.locked INTO o_account_id, o_balance, o_locked
            FROM holds AS h JOIN accounts AS a ON a.id = h.account_id WHERE h.id = p_ids[i];
            IF NOT FOUND THEN
                RAISE EXCEPTION 'no hold %', p_ids[i] USING ERRCODE = 'OX003', DETAIL = i::text;
            END IF;
            o_charged := 0; o_released := 0; o_final := true;
            RETURN NEXT;
            CONTINUE;
        END IF;
        UPDATE accounts AS a
        SET balance = a.balance - v_hold.charged, locked = a.locked - v_hold.amount
        WHERE a.id = v_hold.account_id
        RETURNING a.id, a.balance, a.locked INTO o_account_id, o_balance, o_locked;
        o_charged := v_hold.charged;
        o_released := v_hold.amount - v_hold.charged;
        o_final := false;
        -- The ledger shows the wallet after each row: the charge first, then the release.
        IF o_charged > 0 THEN
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id)
            VALUES (o_account_id, 'charge', o_charged, o_balance, o_locked + o_released,
                    v_hold.request_id, p_ids[i]);
        END IF;
        IF o_released > 0 THEN
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id)
            VALUES (o_account_id, 'release', o_released, o_balance, o_locked,
                    v_hold.request_id, p_ids[i]);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
