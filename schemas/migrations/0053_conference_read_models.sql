-- Read models of projection `conferences` (rooms of `conference-{id}` streams).
-- Every table and key carries tenant_id.

-- One row per room: its settings and, while someone is in it, the running session.
CREATE TABLE rm_conference_rooms (
    tenant_id          uuid NOT NULL,
    room_id            uuid NOT NULL,
    name               text NOT NULL,
    owner_account_id   uuid NOT NULL,
    access_number      text,
    moderated          boolean NOT NULL,
    max_participants   integer NOT NULL,
    record             boolean NOT NULL,
    removed            boolean NOT NULL,
    created_at         timestamptz NOT NULL,
    session_id         uuid,
    session_node       text,
    session_started_at timestamptz,
    sessions           integer NOT NULL,
    last_position      bigint NOT NULL,
    PRIMARY KEY (tenant_id, room_id)
);

-- One CDR leg per participant and session: role, when they entered and left (or were
-- kicked), seconds in the room, mute state. The room's owner account pays for these legs.
CREATE TABLE rm_conference_legs (
    tenant_id  uuid NOT NULL,
    room_id    uuid NOT NULL,
    session_id uuid NOT NULL,
    leg_id     uuid NOT NULL,
    call_id    uuid NOT NULL,
    role       text NOT NULL,
    muted      boolean NOT NULL,
    mutes      integer NOT NULL,
    joined_at  timestamptz NOT NULL,
    left_at    timestamptz,
    -- 'left' or 'kicked' once gone.
    left_how   text,
    in_room_s  integer,
    PRIMARY KEY (tenant_id, room_id, session_id, leg_id)
);

-- Live view: the rooms in session now and who is in them (talking is the mixer's moment to
-- moment state, not an event, so it is not here). Running durations are computed when read.
CREATE VIEW rm_live_conference_participants AS
SELECT l.tenant_id, l.room_id, r.name AS room_name, l.session_id, l.leg_id, l.call_id, l.role, l.muted,
       l.joined_at
FROM rm_conference_legs l
JOIN rm_conference_rooms r
  ON r.tenant_id = l.tenant_id AND r.room_id = l.room_id AND r.session_id = l.session_id
WHERE l.left_at IS NULL;

CREATE VIEW rm_live_conference_rooms AS
SELECT r.tenant_id, r.room_id, r.name, r.owner_account_id, r.moderated, r.session_id, r.session_node,
       r.session_started_at,
       count(p.leg_id)::bigint AS participants,
       count(p.leg_id) FILTER (WHERE p.role = 'host')::bigint AS hosts,
       count(p.leg_id) FILTER (WHERE p.muted)::bigint AS muted
FROM rm_conference_rooms r
LEFT JOIN rm_live_conference_participants p ON p.tenant_id = r.tenant_id AND p.room_id = r.room_id
WHERE r.session_id IS NOT NULL
GROUP BY r.tenant_id, r.room_id, r.name, r.owner_account_id, r.moderated, r.session_id, r.session_node,
         r.session_started_at;
