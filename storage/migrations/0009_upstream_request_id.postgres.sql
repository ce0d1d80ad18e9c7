-- The upstream's own id of the attempt that answered a request (Azure's apim-request-id,
-- Vertex's responseId), so an operator can quote it to the provider's support. NULL when the
-- upstream named none (the simulator, no upstream reached, or a log written before this
-- version). A nullable column without a default: no rewrite of the table, on either dialect.
ALTER TABLE request_logs ADD COLUMN upstream_request_id TEXT;
