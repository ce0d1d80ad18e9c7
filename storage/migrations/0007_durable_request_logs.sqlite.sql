-- A charged request's log is as durable as its charge. The settle or release that finalizes a
-- hold also stores the request's log in the hold row (holds.log, JSON: storage/_common.py's
-- log_to_json); the usage aggregator, once it has written the log to request_logs (and the
-- rollups), clears it. A process that dies between the two leaves the log here, and the
-- recovery of that process writes it (storage/sqlite.py, _recover_instance).
ALTER TABLE holds ADD COLUMN log TEXT;
-- Only holds whose log is not written yet: a few per process in flight, found by process.
CREATE INDEX holds_unlogged_instance ON holds (instance_id) WHERE log IS NOT NULL;
