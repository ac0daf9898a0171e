-- Projection lag, live: for each projection its checkpoint, the head of the log, how many
-- events it still has to apply (those after its `(tx_id, global_position)` cursor, the order
-- it reads in) and how long the oldest of them has waited. Computed when read, so the
-- projected rows never depend on the clock.
DROP VIEW rm_projection_lag;
CREATE VIEW rm_projection_lag AS
SELECT c.projection,
       c.version,
       c.position AS checkpoint_position,
       c.events_seen,
       c.updated_at,
       head.position AS head_position,
       pending.events AS events_behind,
       CASE WHEN pending.oldest IS NULL THEN 0
            ELSE greatest(extract(epoch FROM now() - pending.oldest), 0) END AS lag_s
FROM projection_checkpoints c
CROSS JOIN LATERAL (SELECT coalesce(max(global_position), 0) AS position FROM events) head
CROSS JOIN LATERAL (
    SELECT count(*) AS events, min(e.recorded_at) AS oldest
    FROM events e
    WHERE (e.tx_id, e.global_position) > (c.tx_id, c.position)
) pending;
