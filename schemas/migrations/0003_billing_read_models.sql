-- Read models of projection `billing` (CDRs, legs, charges, balances, reports, live calls)
-- and of projection `invoices`. Every table and key carries tenant_id. Money is NUMERIC.
-- Derived figures (ASR, ACD, available funds, running durations, lag) are views, so the
-- projected rows hold only facts folded from events, and a replay reproduces them byte for byte.

-- One record per call.
CREATE TABLE rm_cdrs (
    tenant_id       uuid NOT NULL,
    call_id         uuid NOT NULL,
    direction       text NOT NULL,
    caller          text NOT NULL,
    caller_name     text NOT NULL,
    callee          text NOT NULL,
    callee_name     text NOT NULL,
    did             text,
    trunk_id        uuid,
    account_id      uuid,
    started_at      timestamptz NOT NULL,
    authorized_at   timestamptz,
    max_duration_s  integer,
    rejected_reason text,
    ring_at         timestamptz,
    answer_at       timestamptz,
    answered_leg    uuid,
    end_at          timestamptz,
    duration_s      integer,
    billed_s        integer,
    end_reason      text,
    hangup_by       text,
    sip_status      integer,
    holds           integer NOT NULL,
    transfers       integer NOT NULL,
    transferred_to  text,
    charge          numeric,
    currency        text,
    last_position   bigint NOT NULL,
    PRIMARY KEY (tenant_id, call_id)
);
CREATE INDEX rm_cdrs_tenant_started ON rm_cdrs (tenant_id, started_at);

-- One row per leg; conference participants become legs of kind 'conference' (media issue).
CREATE TABLE rm_cdr_legs (
    tenant_id       uuid NOT NULL,
    call_id         uuid NOT NULL,
    leg_id          uuid NOT NULL,
    kind            text NOT NULL,
    target          text NOT NULL,
    trunk_id        uuid,
    created_at      timestamptz NOT NULL,
    ring_at         timestamptz,
    answer_at       timestamptz,
    end_at          timestamptz,
    duration_s      integer,
    -- Media quality, when a media node reports it (media issue).
    mos             numeric,
    jitter_ms       integer,
    packet_loss_pct numeric,
    PRIMARY KEY (tenant_id, call_id, leg_id)
);

-- Every answered leg rated against the tariff version in force at its answer time.
CREATE TABLE rm_charges (
    tenant_id        uuid NOT NULL,
    call_id          uuid NOT NULL,
    leg_id           uuid NOT NULL,
    account_id       uuid NOT NULL,
    answered_at      timestamptz NOT NULL,
    duration_s       integer NOT NULL,
    destination      text NOT NULL,
    -- 'rated' with an amount, or 'unrated' with the reason (no tariff, no rate, ...).
    status           text NOT NULL,
    unrated_reason   text,
    tariff_id        uuid,
    tariff_version   integer,
    matched_prefix   text,
    billed_s         integer,
    currency         text,
    amount           numeric,
    amount_exact     numeric,
    -- The explanation as finance reads it (`Explanation::render`): prefix, version, billed
    -- seconds, each run of intervals with its price and period, fee, surcharge, exact and
    -- posted amounts. Its structured parts are the columns above.
    explanation      text,
    position         bigint NOT NULL,
    PRIMARY KEY (tenant_id, call_id, leg_id)
);
CREATE INDEX rm_charges_account ON rm_charges (tenant_id, account_id, answered_at);

-- What rating needs from accounts and tariffs, kept by the same projection so that a charge
-- depends only on events before it in the log.
CREATE TABLE rm_rating_tariff_versions (
    tenant_id      uuid NOT NULL,
    tariff_id      uuid NOT NULL,
    version        integer NOT NULL,
    effective_from timestamptz NOT NULL,
    body           jsonb NOT NULL,
    PRIMARY KEY (tenant_id, tariff_id, version)
);

CREATE TABLE rm_rating_assignments (
    tenant_id      uuid NOT NULL,
    account_id     uuid NOT NULL,
    effective_from timestamptz NOT NULL,
    tariff_id      uuid NOT NULL,
    PRIMARY KEY (tenant_id, account_id, effective_from)
);

-- Balances per account: only payments, adjustments and settled charges move `balance`.
CREATE TABLE rm_balances (
    tenant_id         uuid NOT NULL,
    account_id        uuid NOT NULL,
    kind              text NOT NULL,
    credit_limit      numeric NOT NULL,
    currency          text NOT NULL,
    billing_tz        text NOT NULL,
    payments          numeric NOT NULL,
    adjustments       numeric NOT NULL,
    settled_charges   numeric NOT NULL,
    open_reservations numeric NOT NULL,
    balance           numeric NOT NULL,
    opened_at         timestamptz NOT NULL,
    last_position     bigint NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);

CREATE VIEW rm_balances_view AS
SELECT b.*, b.balance + b.credit_limit - b.open_reservations AS available
FROM rm_balances b;

-- The account ledger: one row per balance-moving event, with the balance after it.
CREATE TABLE rm_account_entries (
    tenant_id      uuid NOT NULL,
    account_id     uuid NOT NULL,
    stream_version bigint NOT NULL,
    kind           text NOT NULL,
    ref_id         uuid NOT NULL,
    amount         numeric NOT NULL,
    balance_after  numeric NOT NULL,
    occurred_at    timestamptz NOT NULL,
    position       bigint NOT NULL,
    PRIMARY KEY (tenant_id, account_id, stream_version)
);

CREATE TABLE rm_reservations (
    tenant_id      uuid NOT NULL,
    account_id     uuid NOT NULL,
    reservation_id uuid NOT NULL,
    call_id        uuid NOT NULL,
    amount         numeric NOT NULL,
    max_duration_s integer NOT NULL,
    status         text NOT NULL,
    settled_amount numeric,
    reserved_at    timestamptz NOT NULL,
    closed_at      timestamptz,
    PRIMARY KEY (tenant_id, account_id, reservation_id)
);

-- Traffic per tenant, hour (UTC, of the call's start), direction and trunk; a call counts
-- once, when it ends. Daily figures, ASR and ACD are views over it.
CREATE TABLE rm_report_hourly (
    tenant_id  uuid NOT NULL,
    hour       timestamptz NOT NULL,
    direction  text NOT NULL,
    -- The nil UUID when the call used no trunk.
    trunk_id   uuid NOT NULL,
    -- '' when nothing was charged.
    currency   text NOT NULL,
    calls      bigint NOT NULL,
    answered   bigint NOT NULL,
    duration_s bigint NOT NULL,
    billed_s   bigint NOT NULL,
    cost       numeric NOT NULL,
    PRIMARY KEY (tenant_id, hour, direction, trunk_id, currency)
);

CREATE TABLE rm_report_destinations (
    tenant_id   uuid NOT NULL,
    day         date NOT NULL,
    -- The matched prefix of the rate, or 'unrated'.
    destination text NOT NULL,
    currency    text NOT NULL,
    calls       bigint NOT NULL,
    duration_s  bigint NOT NULL,
    cost        numeric NOT NULL,
    PRIMARY KEY (tenant_id, day, destination, currency)
);

CREATE VIEW rm_report_daily AS
SELECT tenant_id, (hour AT TIME ZONE 'UTC')::date AS day, direction, trunk_id, currency,
       sum(calls)::bigint AS calls, sum(answered)::bigint AS answered,
       sum(duration_s)::bigint AS duration_s, sum(billed_s)::bigint AS billed_s, sum(cost) AS cost,
       CASE WHEN sum(calls) > 0 THEN round(100.0 * sum(answered) / sum(calls), 2) END AS asr_pct,
       CASE WHEN sum(answered) > 0 THEN round(sum(duration_s)::numeric / sum(answered), 1) END AS acd_s
FROM rm_report_hourly
GROUP BY tenant_id, (hour AT TIME ZONE 'UTC')::date, direction, trunk_id, currency;

-- Peak concurrent answered calls per tenant and day (UTC), by a sweep over answer/end times.
CREATE VIEW rm_report_peak_concurrency AS
WITH edges AS (
    SELECT tenant_id, answer_at AS at, 1 AS delta FROM rm_cdrs WHERE answer_at IS NOT NULL AND end_at IS NOT NULL
    UNION ALL
    SELECT tenant_id, end_at AS at, -1 AS delta FROM rm_cdrs WHERE answer_at IS NOT NULL AND end_at IS NOT NULL
), running AS (
    SELECT tenant_id, at, sum(delta) OVER (PARTITION BY tenant_id ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS concurrent
    FROM edges
)
SELECT tenant_id, (at AT TIME ZONE 'UTC')::date AS day, max(concurrent)::bigint AS peak_concurrent_calls
FROM running GROUP BY tenant_id, (at AT TIME ZONE 'UTC')::date;

-- Live view: calls not yet ended. The running duration is computed when read.
CREATE TABLE rm_live_calls (
    tenant_id  uuid NOT NULL,
    call_id    uuid NOT NULL,
    state      text NOT NULL,
    caller     text NOT NULL,
    callee     text NOT NULL,
    direction  text NOT NULL,
    started_at timestamptz NOT NULL,
    answer_at  timestamptz,
    on_hold    boolean NOT NULL,
    PRIMARY KEY (tenant_id, call_id)
);

-- Registered devices per extension: filled by the SIP issue's registration events.
CREATE TABLE rm_registrations (
    tenant_id    uuid NOT NULL,
    extension_id uuid NOT NULL,
    contact      text NOT NULL,
    user_agent   text NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, extension_id, contact)
);

-- Projection lag: how far each checkpoint is behind the end of the log.
CREATE VIEW rm_projection_lag AS
SELECT c.projection, c.version, c.position, c.events_seen, c.updated_at,
       (SELECT count(*) FROM events e WHERE e.global_position > c.position) AS events_behind
FROM projection_checkpoints c;

-- Invoices (projection `invoices`): one document per account and period, as billed and
-- as corrected, with grouped lines.
CREATE TABLE rm_invoices (
    tenant_id          uuid NOT NULL,
    account_id         uuid NOT NULL,
    period             text NOT NULL,
    currency           text NOT NULL,
    status             text NOT NULL,
    tax_rate_pct       numeric,
    tax_mode           text,
    billed_net         numeric,
    billed_tax         numeric,
    billed_total       numeric,
    corrected_net      numeric,
    corrected_tax      numeric,
    corrected_total    numeric,
    document           text NOT NULL,
    corrected_document text NOT NULL,
    PRIMARY KEY (tenant_id, account_id, period)
);

CREATE TABLE rm_invoice_lines (
    tenant_id       uuid NOT NULL,
    account_id      uuid NOT NULL,
    period          text NOT NULL,
    view            text NOT NULL,
    line_no         integer NOT NULL,
    service         text NOT NULL,
    destination     text NOT NULL,
    kind            text NOT NULL,
    original_period text,
    count           bigint NOT NULL,
    amount          numeric NOT NULL,
    PRIMARY KEY (tenant_id, account_id, period, view, line_no)
);

-- The invoice book events themselves, so the projection can refold a book in one query.
CREATE TABLE rm_invoice_book_events (
    tenant_id      uuid NOT NULL,
    account_id     uuid NOT NULL,
    stream_version bigint NOT NULL,
    event_type     text NOT NULL,
    payload        jsonb NOT NULL,
    PRIMARY KEY (tenant_id, account_id, stream_version)
);
