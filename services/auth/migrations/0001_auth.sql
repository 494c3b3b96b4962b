-- The auth service's tables: users, refresh tokens, signing keys.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Stored lower case (domain::normalize_email); the unique index below
    -- also folds case so that no code path can create a case twin.
    email         text        NOT NULL,
    display_name  text        NOT NULL,
    -- argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('customer', 'admin', 'courier')),
    -- A deactivated user can neither log in nor refresh.
    active        boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Refresh tokens, stored as SHA-256 of the opaque token (a database leak
-- yields no usable token). Every token descends from one login: its family.
CREATE TABLE refresh_tokens (
    id          uuid        PRIMARY KEY,
    token_hash  bytea       NOT NULL UNIQUE,
    user_id     uuid        NOT NULL REFERENCES users (id),
    family_id   uuid        NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- Set when used (rotation), logged out, or revoked with its family.
    revoked_at  timestamptz,
    -- The token that replaced this one on rotation.
    replaced_by uuid
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id) WHERE revoked_at IS NULL;
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

-- Ed25519 keys that sign access tokens. The newest key whose activates_at
-- has passed signs; older ones stay published until expires_at.
CREATE TABLE signing_keys (
    -- The JWS `kid`: derived from the public key (jwt::key_id_for).
    kid             text        PRIMARY KEY,
    -- PKCS#8 PEM. Not encrypted at rest locally; in Kubernetes the operator
    -- may supply the key from a Secret (--signing-key-file) instead.
    private_key_pem text        NOT NULL,
    -- Raw 32-byte public key.
    public_key      bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- When the key starts signing; later than created_at for a pre-published
    -- key, so verifiers know it before the first token signed with it.
    activates_at    timestamptz NOT NULL DEFAULT now(),
    -- After this the key verifies nothing; NULL while it is the active key.
    expires_at      timestamptz
);
