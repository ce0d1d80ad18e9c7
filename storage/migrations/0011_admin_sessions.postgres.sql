-- Operator sign-ins to /admin (with OMIXA_ADMIN_TOKEN), kept on the server like
-- dashboard_sessions so that signing out ends the session in every process: the browser's
-- cookie names a row here (signed with the session secret), and a session is live while its
-- row exists and has not expired. Keep in step with 0011_admin_sessions.sqlite.sql.
CREATE TABLE admin_sessions (
    id          TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);
