-- The wallet page's balance over time reads an account's ledger rows by time (the last row
-- before a range, the last of each hour or day in it): an index on (account_id, created_at,
-- id) keeps that to the range's rows, not the account's whole ledger. Keep in step with
-- 0014_ledger_by_time.postgres.sql.
CREATE INDEX IF NOT EXISTS ledger_account_time ON ledger (account_id, created_at, id);
