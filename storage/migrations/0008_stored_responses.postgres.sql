-- Responses the upstream stores (the Responses API's `store`): which Azure resource holds
-- each one and which account made it, so that a follow-up (`previous_response_id`) goes to
-- that resource and another account's id is "not found". `context_tokens` is what the
-- response adds to a follow-up's context (its input plus its output tokens), for the
-- follow-up's hold; `output_tokens` bounds what any of its output items adds to a request
-- that sends it back by reference.
CREATE TABLE stored_responses (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    key_id          TEXT NOT NULL,
    model           TEXT NOT NULL,
    deployment      TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    context_tokens  BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stored_responses_account ON stored_responses (account_id, created_at);
-- The output items of each stored response (messages, reasoning, function calls), so that an
-- input item sent by reference (`item_reference`, or a reasoning item by its id) is known to
-- be the caller's and is sent to the resource that holds it.
CREATE TABLE stored_response_items (
    id           TEXT PRIMARY KEY,
    response_id  TEXT NOT NULL REFERENCES stored_responses (id) ON DELETE CASCADE,
    account_id   TEXT NOT NULL
);
CREATE INDEX stored_response_items_response ON stored_response_items (response_id);
