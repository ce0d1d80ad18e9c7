-- The message a request that ended in an error was answered with (its code is the log's
-- status), for the request log's detail: what the client saw, not only its code. NULL for a
-- request that did not end in an error, and for a log written before this version. A
-- nullable column without a default: no rewrite of the table, on either dialect.
ALTER TABLE request_logs ADD COLUMN error_message TEXT;
