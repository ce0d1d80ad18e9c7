-- Request signatures: each key's signing secret, encrypted (Fernet under OMIXA_SECRET_KEY,
-- never plain), the previous one during its grace period after a rotation, and whether the
-- key must sign every request.
ALTER TABLE api_keys ADD COLUMN signature_required INTEGER NOT NULL DEFAULT 0
    CHECK (signature_required IN (0, 1));
ALTER TABLE api_keys ADD COLUMN signing_secret_enc TEXT;
ALTER TABLE api_keys ADD COLUMN previous_secret_enc TEXT;
ALTER TABLE api_keys ADD COLUMN previous_secret_expires_at INTEGER;
