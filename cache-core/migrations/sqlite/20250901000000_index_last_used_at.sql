-- apikey-cache: cache warming lists keys by `last_used_at`, most recent
-- first, in pages (`KeyStore::recently_used`): a backward range scan of this
-- index instead of a sort of the whole table per page. The usage flush
-- updates `last_used_at`, so it now updates this index too.

CREATE INDEX IF NOT EXISTS api_keys_last_used_at_idx ON api_keys (last_used_at, key_hash);
