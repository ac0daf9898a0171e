-- The event log and its stream heads (see ARCHITECTURE.md, "The event-store protocol").

CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL UNIQUE,
    tenant_id       uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    hash            bytea       NOT NULL,
    UNIQUE (tenant_id, stream_id, stream_version)
);

-- Subscribers read in (tx_id, global_position) order behind the xmin fence.
CREATE INDEX events_tx_position ON events (tx_id, global_position);
CREATE INDEX events_tenant_position ON events (tenant_id, global_position);

CREATE TABLE streams (
    tenant_id  uuid   NOT NULL,
    stream_id  text   NOT NULL,
    version    bigint NOT NULL CHECK (version >= 0),
    last_hash  bytea  NOT NULL,
    PRIMARY KEY (tenant_id, stream_id)
);

-- The log is append-only: no role may rewrite history through the application's paths.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP;
END $$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

-- Projection checkpoints, written in the same transaction as the read-model rows they cover.
CREATE TABLE projection_checkpoints (
    projection  text   PRIMARY KEY,
    version     integer NOT NULL,
    tx_id       xid8   NOT NULL,
    position    bigint NOT NULL,
    events_seen bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
