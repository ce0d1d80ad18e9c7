-- Responses the upstream stores (the Responses API's `store`): which Azure resource holds
-- each one and which account made it, so that a follow-up (`previous_response_id`) goes to
-- that resource and another account's id is "not found". `context_tokens` is what the
-- response adds to a follow-up's context (its input plus its output tokens), for the
-- follow-up's hold.
CREATE TABLE stored_responses (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    key_id          TEXT NOT NULL,
    model           TEXT NOT NULL,
    deployment      TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    context_tokens  BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stored_responses_account ON stored_responses (account_id, created_at);
