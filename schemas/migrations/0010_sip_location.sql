-- The location service: where each extension's devices can be reached, shared by every SIP
-- node. Operational state, not a projection: the registrar writes it directly and appends
-- an event only when a binding is created, changed or removed.

CREATE TABLE sip_bindings (
    tenant_id    uuid        NOT NULL,
    extension_id uuid        NOT NULL,
    contact      text        NOT NULL,
    source       text        NOT NULL,
    call_id      text        NOT NULL,
    cseq         bigint      NOT NULL,
    user_agent   text        NOT NULL DEFAULT '',
    expires_at   timestamptz NOT NULL,
    node_id      text        NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, extension_id, contact)
);

CREATE INDEX sip_bindings_expiry ON sip_bindings (expires_at);
