-- apikey-cache: the PostgreSQL key store's schema.

CREATE TABLE api_keys (
    key_id                 TEXT        NOT NULL PRIMARY KEY,
    -- SHA-256 / HMAC-SHA-256 of the key; never the plaintext.
    key_hash               BYTEA       NOT NULL UNIQUE
                                       CONSTRAINT api_keys_key_hash_len CHECK (octet_length(key_hash) = 32),
    owner                  TEXT        NOT NULL,
    scopes                 TEXT[]      NOT NULL DEFAULT '{}'
                                       CONSTRAINT api_keys_scopes_no_nulls
                                       CHECK (array_position(scopes, NULL) IS NULL),
    status                 TEXT        NOT NULL
                                       CONSTRAINT api_keys_status_known
                                       CHECK (status IN ('active', 'revoked', 'disabled')),
    expires_at             TIMESTAMPTZ NULL,
    rate_limit_requests    BIGINT      NULL CONSTRAINT api_keys_rate_limit_requests_nonneg
                                            CHECK (rate_limit_requests >= 0),
    rate_limit_per_seconds BIGINT      NULL CONSTRAINT api_keys_rate_limit_per_seconds_nonneg
                                            CHECK (rate_limit_per_seconds >= 0),
    monthly_quota          BIGINT      NULL CONSTRAINT api_keys_monthly_quota_nonneg
                                            CHECK (monthly_quota >= 0),
    total_requests         BIGINT      NOT NULL DEFAULT 0
                                       CONSTRAINT api_keys_total_requests_nonneg
                                       CHECK (total_requests >= 0),
    last_used_at           TIMESTAMPTZ NULL,
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    -- A rate limit has both parts or neither.
    CONSTRAINT api_keys_rate_limit_pair
        CHECK ((rate_limit_requests IS NULL) = (rate_limit_per_seconds IS NULL))
);

CREATE INDEX api_keys_owner_idx ON api_keys (owner);

-- Usage batches already applied, so a retried flush counts once. Rows older
-- than 7 days are pruned by the flush itself.
CREATE TABLE api_key_usage_batches (
    batch_id   UUID        NOT NULL PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX api_key_usage_batches_applied_at_idx ON api_key_usage_batches (applied_at);
