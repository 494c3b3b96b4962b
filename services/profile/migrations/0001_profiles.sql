-- Each user's profile, created by UserRegistered or by the first write.
CREATE TABLE profiles (
    user_id           TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL DEFAULT '',
    phone             TEXT NOT NULL DEFAULT '',
    currency          TEXT NOT NULL DEFAULT '',
    marketing_consent BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL until the user writes it (a profile made from the event only).
    updated_at        TIMESTAMPTZ
);

-- The address book. Changes to one user's book lock their profile row
-- first, so the count limit and the one default hold under concurrency; the
-- partial unique index holds the one default anyway.
CREATE TABLE addresses (
    id             UUID PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES profiles (user_id),
    label          TEXT NOT NULL DEFAULT '',
    recipient_name TEXT NOT NULL,
    line1          TEXT NOT NULL,
    line2          TEXT NOT NULL DEFAULT '',
    city           TEXT NOT NULL,
    region         TEXT NOT NULL DEFAULT '',
    postal_code    TEXT NOT NULL,
    country_code   TEXT NOT NULL,
    phone          TEXT NOT NULL DEFAULT '',
    is_default     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX addresses_by_user ON addresses (user_id, created_at DESC);
CREATE UNIQUE INDEX addresses_one_default ON addresses (user_id) WHERE is_default;
