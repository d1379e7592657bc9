-- Access taken back while tokens may still be out there (`gateway/access.py`):
-- a removed user (key_hash '' : every token of theirs ends, and no JWT makes
-- the user again) or one revoked API key.  Every replica polls new rows to
-- close the connections it holds.
CREATE TABLE revocations (
    user_id TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_hash)
);
CREATE INDEX revocations_at ON revocations (at_ms);

-- Which flavour a key was made for ('openwebui' sk-…, 'ragflow' ragflow-…), so
-- Open WebUI's "delete my API key" does not take a user's RAGFlow tokens.
ALTER TABLE api_keys ADD COLUMN kind TEXT;
