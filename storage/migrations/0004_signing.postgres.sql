-- Request signatures: each key's signing secret, encrypted (Fernet under OMIXA_SECRET_KEY,
-- never plain), the previous one during its grace period after a rotation, and whether the
-- key must sign every request.
ALTER TABLE api_keys ADD COLUMN signature_required BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE api_keys ADD COLUMN signing_secret_enc TEXT;
ALTER TABLE api_keys ADD COLUMN previous_secret_enc TEXT;
ALTER TABLE api_keys ADD COLUMN previous_secret_expires_at TIMESTAMPTZ;
