-- apikey-cache: cache warming lists keys by `last_used_at`, most recent
-- first, in pages (`KeyStore::recently_used`): a backward range scan of this
-- index instead of a sort of the whole table per page. The usage flush
-- updates `last_used_at`, so it now updates this index too.
--
-- Migrations run in a transaction, so this is a plain CREATE INDEX, which
-- blocks writes to `api_keys` while it builds. On a large table, build it
-- beforehand with
--     CREATE INDEX CONCURRENTLY api_keys_last_used_at_idx
--         ON api_keys (last_used_at, key_hash);
-- and this migration finds it there and does nothing.

CREATE INDEX IF NOT EXISTS api_keys_last_used_at_idx ON api_keys (last_used_at, key_hash);
