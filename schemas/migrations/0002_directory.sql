-- Read model: the tenant and extension directory (projection `directory`).

CREATE TABLE rm_tenants (
    tenant_id            uuid PRIMARY KEY,
    name                 text NOT NULL,
    sip_domain           text NOT NULL UNIQUE,
    max_extensions       integer NOT NULL,
    max_concurrent_calls integer NOT NULL,
    suspended            boolean NOT NULL DEFAULT false,
    extension_count      integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL,
    last_position        bigint NOT NULL
);

CREATE TABLE rm_extensions (
    tenant_id     uuid NOT NULL,
    extension_id  uuid NOT NULL,
    number        text NOT NULL,
    display_name  text NOT NULL,
    realm         text NOT NULL,
    ha1_md5       text NOT NULL,
    ha1_sha256    text NOT NULL,
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL,
    last_position bigint NOT NULL,
    PRIMARY KEY (tenant_id, extension_id),
    UNIQUE (tenant_id, number)
);
