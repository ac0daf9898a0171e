-- Media quality per CDR leg, from `CallEnded.media` (what a media node counted on the leg).
-- The placeholders of 0003 (mos, jitter_ms, packet_loss_pct) were never filled: the media
-- node reports integer counters, so the table keeps those and a view derives the rest.
ALTER TABLE rm_cdr_legs
    DROP COLUMN mos,
    DROP COLUMN jitter_ms,
    DROP COLUMN packet_loss_pct,
    ADD COLUMN codec            text,
    ADD COLUMN packets_received bigint,
    ADD COLUMN packets_sent     bigint,
    ADD COLUMN bytes_received   bigint,
    ADD COLUMN bytes_sent       bigint,
    ADD COLUMN packets_lost     bigint,
    -- RFC 3550 interarrival jitter, in microseconds.
    ADD COLUMN jitter_us        bigint;

-- Derived quality figures, computed when read: loss as a percentage of the packets expected.
CREATE VIEW rm_cdr_leg_quality AS
SELECT tenant_id, call_id, leg_id, kind, codec, packets_received, packets_lost, jitter_us,
       CASE WHEN packets_received + packets_lost > 0
            THEN round(100.0 * packets_lost / (packets_received + packets_lost), 2) END AS packet_loss_pct,
       round(jitter_us / 1000.0, 1) AS jitter_ms
FROM rm_cdr_legs
WHERE codec IS NOT NULL;
