-- Trunks, outbound routes and DIDs (directory projection).


CREATE TABLE rm_trunks (
    tenant_id    uuid NOT NULL,
    trunk_id     uuid NOT NULL,
    name         text NOT NULL,
    host         text NOT NULL,
    port         integer NOT NULL,
    transport    text NOT NULL,
    -- IP authentication: INVITEs from these addresses are this trunk's (inbound).
    allowed_ips  text[] NOT NULL,
    -- Outbound digest credentials, if the carrier challenges.
    username     text,
    password     text,
    enabled      boolean NOT NULL,
    PRIMARY KEY (tenant_id, trunk_id)
);
CREATE INDEX rm_trunks_allowed_ips ON rm_trunks USING gin (allowed_ips);

CREATE TABLE rm_routes (
    tenant_id    uuid NOT NULL,
    route_id     uuid NOT NULL,
    prefix       text NOT NULL,
    strip_digits integer NOT NULL,
    prepend      text NOT NULL,
    priority     integer NOT NULL,
    trunk_ids    uuid[] NOT NULL,
    PRIMARY KEY (tenant_id, route_id)
);

CREATE TABLE rm_dids (
    tenant_id        uuid NOT NULL,
    did              text NOT NULL,
    extension_number text NOT NULL,
    PRIMARY KEY (tenant_id, did)
);
