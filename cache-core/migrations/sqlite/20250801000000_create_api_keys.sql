-- apikey-cache: the SQLite key store's schema.
--
-- Instants are INTEGER unix milliseconds (UTC), so comparisons in SQL are
-- numeric. Counts are INTEGER (64-bit). Tables are STRICT, so a value of the
-- wrong type cannot be stored by accident.

CREATE TABLE api_keys (
    key_id                 TEXT    NOT NULL PRIMARY KEY,
    -- SHA-256 / HMAC-SHA-256 of the key; never the plaintext.
    key_hash               BLOB    NOT NULL UNIQUE
                                   CONSTRAINT api_keys_key_hash_len CHECK (length(key_hash) = 32),
    owner                  TEXT    NOT NULL,
    -- A JSON array of strings.
    scopes                 TEXT    NOT NULL DEFAULT '[]'
                                   CONSTRAINT api_keys_scopes_array
                                   CHECK (json_valid(scopes) AND json_type(scopes) = 'array'),
    status                 TEXT    NOT NULL
                                   CONSTRAINT api_keys_status_known
                                   CHECK (status IN ('active', 'revoked', 'disabled')),
    expires_at             INTEGER NULL,
    rate_limit_requests    INTEGER NULL CONSTRAINT api_keys_rate_limit_requests_nonneg
                                        CHECK (rate_limit_requests >= 0),
    rate_limit_per_seconds INTEGER NULL CONSTRAINT api_keys_rate_limit_per_seconds_nonneg
                                        CHECK (rate_limit_per_seconds >= 0),
    monthly_quota          INTEGER NULL CONSTRAINT api_keys_monthly_quota_nonneg
                                        CHECK (monthly_quota >= 0),
    total_requests         INTEGER NOT NULL DEFAULT 0
                                   CONSTRAINT api_keys_total_requests_nonneg
                                   CHECK (total_requests >= 0),
    last_used_at           INTEGER NULL,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    -- A rate limit has both parts or neither.
    CONSTRAINT api_keys_rate_limit_pair
        CHECK ((rate_limit_requests IS NULL) = (rate_limit_per_seconds IS NULL))
) STRICT;

CREATE INDEX api_keys_owner_idx ON api_keys (owner);

-- Usage batches already applied, so a retried flush counts once. Rows older
-- than 7 days are pruned by the flush itself.
CREATE TABLE api_key_usage_batches (
    batch_id   TEXT    NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
) STRICT;

CREATE INDEX api_key_usage_batches_applied_at_idx ON api_key_usage_batches (applied_at);
