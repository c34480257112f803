-- Accounts, sessions and API tokens. Secrets are stored only as hashes: passwords with argon2id,
-- refresh and API tokens (long random strings) with SHA-256.
CREATE TABLE users (
    user_id       text        PRIMARY KEY,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    name          text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('attendee', 'organizer')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Email is unique without regard to case.
CREATE UNIQUE INDEX users_by_email ON users (lower(email));

-- One row per refresh token. A session (family) is a chain of rotated tokens; reusing a rotated
-- token revokes the whole session (it was stolen, or the client is confused).
CREATE TABLE refresh_tokens (
    token_hash  bytea       PRIMARY KEY,
    session_id  text        NOT NULL,
    user_id     text        NOT NULL REFERENCES users (user_id),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE api_tokens (
    token_id    text        PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('service', 'admin')),
    token_hash  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX api_tokens_by_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Secrets the service makes for itself on first start (the JWT signing key, unless configured).
CREATE TABLE service_secrets (
    name       text        PRIMARY KEY,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
