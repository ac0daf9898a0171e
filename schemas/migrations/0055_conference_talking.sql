-- Who is talking in a live conference: the mixer's moment-to-moment state, written by the
-- media node that runs the session (a row while the participant talks, with a hang time),
-- not an event and not a projection: it is not replayed, and a restarting node clears its own
-- rows. UNLOGGED: a crash loses only a state that the next spoken word rebuilds.
CREATE UNLOGGED TABLE live_conference_talking (
    tenant_id  uuid NOT NULL,
    room_id    uuid NOT NULL,
    session_id uuid NOT NULL,
    leg_id     uuid NOT NULL,
    node_id    text NOT NULL,
    since      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, room_id, leg_id)
);
CREATE INDEX live_conference_talking_node ON live_conference_talking (node_id);

-- The live views gain the talking flag (a participant talks in the session it is in).
CREATE OR REPLACE VIEW rm_live_conference_participants AS
SELECT l.tenant_id, l.room_id, r.name AS room_name, l.session_id, l.leg_id, l.call_id, l.role, l.muted,
       l.joined_at,
       EXISTS (
           SELECT 1 FROM live_conference_talking t
           WHERE t.tenant_id = l.tenant_id AND t.room_id = l.room_id AND t.leg_id = l.leg_id
             AND t.session_id = l.session_id
       ) AND NOT l.muted AS talking
FROM rm_conference_legs l
JOIN rm_conference_rooms r
  ON r.tenant_id = l.tenant_id AND r.room_id = l.room_id AND r.session_id = l.session_id
WHERE l.left_at IS NULL;

CREATE OR REPLACE VIEW rm_live_conference_rooms AS
SELECT r.tenant_id, r.room_id, r.name, r.owner_account_id, r.moderated, r.session_id, r.session_node,
       r.session_started_at,
       count(p.leg_id)::bigint AS participants,
       count(p.leg_id) FILTER (WHERE p.role = 'host')::bigint AS hosts,
       count(p.leg_id) FILTER (WHERE p.muted)::bigint AS muted,
       count(p.leg_id) FILTER (WHERE p.talking)::bigint AS talking
FROM rm_conference_rooms r
LEFT JOIN rm_live_conference_participants p ON p.tenant_id = r.tenant_id AND p.room_id = r.room_id
WHERE r.session_id IS NOT NULL
GROUP BY r.tenant_id, r.room_id, r.name, r.owner_account_id, r.moderated, r.session_id, r.session_node,
         r.session_started_at;

-- Reports count conference participant legs too (projection `billing` version 3).
COMMENT ON COLUMN rm_report_hourly.direction IS
    'inbound, outbound, internal, or conference (a participant leg, charged to the room owner)';
