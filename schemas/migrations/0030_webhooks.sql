-- Webhooks (issue 7, item 4): the read model of registered webhooks, their secrets (kept
-- outside the log), the dispatcher's checkpoints and the delivery log.

-- Read model (projection `webhooks`): a tenant's live webhooks, as listed to the tenant.
-- A removed webhook's row is deleted. Never holds a secret, only its key id and fingerprint.
CREATE TABLE rm_webhooks (
    tenant_id          uuid        NOT NULL,
    webhook_id         uuid        NOT NULL,
    url                text        NOT NULL,
    event_types        text[]      NOT NULL,
    enabled            boolean     NOT NULL,
    disabled_reason    text        NOT NULL DEFAULT '',
    secret_key_id      uuid        NOT NULL,
    secret_fingerprint text        NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    last_position      bigint      NOT NULL,
    PRIMARY KEY (tenant_id, webhook_id)
);

-- Signing secrets, outside the log (the log is exported to auditors). A row is written in
-- the same transaction as the event that names its key id (`WebhookRegistered`,
-- `WebhookSecretRotated`), and a webhook's rows are deleted with the `WebhookRemoved`
-- event. Not a read model: a rebuild never touches it.
CREATE TABLE webhook_secrets (
    tenant_id  uuid        NOT NULL,
    webhook_id uuid        NOT NULL,
    key_id     uuid        NOT NULL,
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, webhook_id, key_id)
);

-- The dispatcher's place in the global log: the fenced `(tx_id, position)` cursor up to
-- which every matching delivery has been enqueued.
CREATE TABLE webhook_dispatcher (
    name        text        PRIMARY KEY,
    tx_id       xid8        NOT NULL,
    position    bigint      NOT NULL,
    events_seen bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-webhook checkpoint: the configuration the dispatcher folded from the webhook's own
-- events (in log order, so each event is matched against the filter in force at its
-- position) and the cursor up to which this webhook's deliveries are enqueued. It moves
-- in the same transaction as the delivery rows it covers.
CREATE TABLE webhook_checkpoints (
    tenant_id     uuid    NOT NULL,
    webhook_id    uuid    NOT NULL,
    url           text    NOT NULL,
    event_types   text[]  NOT NULL,
    enabled       boolean NOT NULL,
    removed       boolean NOT NULL DEFAULT false,
    secret_key_id uuid    NOT NULL,
    tx_id         xid8    NOT NULL,
    position      bigint  NOT NULL,
    PRIMARY KEY (tenant_id, webhook_id)
);

-- The delivery log: one row per (webhook, event), written `pending` with the checkpoint
-- that covers it; acknowledged (2xx) → `delivered`; out of attempts → `failed`.
CREATE TABLE webhook_deliveries (
    tenant_id        uuid        NOT NULL,
    webhook_id       uuid        NOT NULL,
    event_id         uuid        NOT NULL,
    event_position   bigint      NOT NULL,
    event_type       text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    last_http_status integer,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    -- A sender claims a due delivery for a while, so two dispatchers never send it at once
    -- and none holds a transaction open across an HTTP request.
    lease_owner      uuid,
    lease_until      timestamptz,
    PRIMARY KEY (tenant_id, webhook_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_tenant ON webhook_deliveries (tenant_id, event_position DESC, webhook_id);
