-- API keys as their owners and admins list them (`gateway apikey list`, GET
-- /api/v1/auths/api_key): a hint of the key (its first and last characters; the
-- key itself is never stored) and when it was last used (written at most once a
-- minute per key).  Keys made before this have neither.
ALTER TABLE api_keys ADD COLUMN hint TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_ms BIGINT;
