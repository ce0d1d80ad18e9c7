-- Dashboard sign-ins, kept on the server so that signing out ends the session everywhere:
-- the browser's cookie names a row here (signed with the session secret), and a session is
-- live while its row exists, has not expired and its key is not revoked.
CREATE TABLE dashboard_sessions (
    id          TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);
