-- Operator sign-ins to /admin (with OMIXA_ADMIN_TOKEN), kept on the server like
-- dashboard_sessions so that signing out ends the session in every process: the browser's
-- cookie names a row here (signed with the session secret), and a session is live while its
-- row exists and has not expired. Times in microseconds since the Unix epoch, as elsewhere in
-- this dialect. Keep in step with 0011_admin_sessions.postgres.sql.
CREATE TABLE admin_sessions (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);
