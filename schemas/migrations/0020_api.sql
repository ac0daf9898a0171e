-- The API (issue 7). Keys are authenticated straight from the log, so a key works the moment
-- its ApiKeyCreated commits and stops the moment its ApiKeyRevoked does (no projection lag).
CREATE INDEX events_apikey_hash ON events ((payload->>'key_hash')) WHERE event_type = 'ApiKeyCreated';

-- Charges listed by time across a tenant's accounts (the account index serves account filters).
CREATE INDEX rm_charges_tenant_answered ON rm_charges (tenant_id, answered_at, call_id, leg_id);

-- Auditors list a tenant's events by type.
CREATE INDEX events_tenant_type_position ON events (tenant_id, event_type, global_position);
