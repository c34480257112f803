-- Ended sessions (logout, a reused refresh token) are read back by every node, at start and every
-- few seconds: their access tokens must stay refused after a restart and on every node.
CREATE INDEX refresh_tokens_by_revocation ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
