-- Conference legs charged to the room owner (projection `billing`): each participant's stay
-- is rated when its session ends, with `billing::conference` at the rate of the room's access
-- number in the owner's tariff. Until then the stays of running sessions are kept here.
CREATE TABLE rm_rating_conference_rooms (
    tenant_id        uuid NOT NULL,
    room_id          uuid NOT NULL,
    owner_account_id uuid NOT NULL,
    access_number    text,
    moderated        boolean NOT NULL,
    PRIMARY KEY (tenant_id, room_id)
);

CREATE TABLE rm_rating_conference_stays (
    tenant_id  uuid NOT NULL,
    room_id    uuid NOT NULL,
    session_id uuid NOT NULL,
    leg_id     uuid NOT NULL,
    call_id    uuid NOT NULL,
    role       text NOT NULL,
    joined_at  timestamptz NOT NULL,
    left_at    timestamptz,
    PRIMARY KEY (tenant_id, room_id, session_id, leg_id)
);

-- What a charge bills for: 'calls', or 'conferences' (call_id is then the participant's
-- call, account_id the room owner's account, destination the access number).
ALTER TABLE rm_charges ADD COLUMN service text NOT NULL DEFAULT 'calls';
