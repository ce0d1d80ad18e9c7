-- Per-key token limit (tokens per minute); NULL means the configured default.
ALTER TABLE api_keys ADD COLUMN tpm INTEGER CHECK (tpm IS NULL OR tpm >= 0);
