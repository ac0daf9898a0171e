-- The API remembers the keys it has authenticated (gateway/src/api/key_cache.rs) and follows
-- every revocation on the fenced (tx_id, global_position) cursor: this index makes that read
-- cost the revocations, not the log.
CREATE INDEX events_apikey_revoked ON events (tx_id, global_position) WHERE event_type = 'ApiKeyRevoked';
