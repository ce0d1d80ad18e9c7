-- The ledger rows of one request (its hold, charge, release or refund), read by the request
-- detail of the dashboard: an index on request_id, of the rows that have one (top-ups and
-- adjustments have none). Keep in step with 0012_ledger_by_request.sqlite.sql.
CREATE INDEX IF NOT EXISTS ledger_request ON ledger (request_id) WHERE request_id IS NOT NULL;
