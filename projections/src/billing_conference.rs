//! The `billing` fold's conference part: participant legs charged to the room owner.
//!
//! A room's owner account and access number, and the stays of its running session, are kept
//! in `rm_rating_conference_*`. When a session ends, its stays are priced together with
//! `billing::conference::conference_charges` (a moderated room bills only while a host is in)
//! at the access number's rate in the owner's tariff in force at the session's first join,
//! in the owner's billing time zone, and become `rm_charges` rows with `service =
//! 'conferences'`; the session's stays are then dropped. Everything depends only on events
//! before the session's end in the log, so a replay rates every session the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use billing::account;
use billing::conference::{self as billing_conference, ConferenceSession, ParticipantStay};
use billing::rating::RateCard;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use commands::store::RecordedEvent;
use domain::conference::{ConferenceEvent, Role};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{ChargeRow, Fold, Item, Key, Traffic};
use crate::conferences::role_name;
use crate::runner::ProjectionError;

/// The room facts billing needs.
#[derive(Debug, Clone)]
pub(super) struct RoomFacts {
    owner_account_id: Uuid,
    access_number: Option<String>,
    moderated: bool,
}

/// One participant's time in a running session.
#[derive(Debug, Clone)]
pub(super) struct Stay {
    call_id: Uuid,
    role: Role,
    joined_at: DateTime<Utc>,
    left_at: Option<DateTime<Utc>>,
}

/// `(tenant, room, session, leg)`.
type StayKey = (Uuid, Uuid, Uuid, Uuid);

#[derive(Default)]
pub(super) struct ConferenceFold {
    rooms: BTreeMap<Key, RoomFacts>,
    rooms_touched: BTreeSet<Key>,
    stays: BTreeMap<StayKey, Stay>,
    stays_touched: BTreeSet<StayKey>,
    /// Stays of sessions that ended (and were rated) in this batch.
    stays_done: BTreeSet<StayKey>,
}

impl Fold {
    /// Load the rooms a batch's conference events touch and their running sessions' stays;
    /// their owners' accounts join `account_ids` so that balances and tariffs are loaded too.
    pub(super) async fn load_conferences(
        &mut self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
        items: &[Item],
        account_ids: &mut HashSet<Key>,
    ) -> Result<(), ProjectionError> {
        let mut rooms: BTreeSet<Key> = BTreeSet::new();
        for (meta, item) in events.iter().zip(items) {
            if let Item::Conference(room, event) = item {
                rooms.insert((meta.tenant_id, *room));
                let settings = match event {
                    ConferenceEvent::ConferenceRoomCreated(e) => Some(&e.settings),
                    ConferenceEvent::ConferenceRoomUpdated(e) => Some(&e.settings),
                    _ => None,
                };
                if let Some(settings) = settings {
                    account_ids.insert((meta.tenant_id, settings.owner_account_id));
                }
            }
        }
        if rooms.is_empty() {
            return Ok(());
        }
        let tenants: Vec<Uuid> = rooms.iter().map(|k| k.0).collect();
        let ids: Vec<Uuid> = rooms.iter().map(|k| k.1).collect();
        let keyed = "(tenant_id, room_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))";
        let rows = sqlx::query(&format!(
            "SELECT tenant_id, room_id, owner_account_id, access_number, moderated FROM rm_rating_conference_rooms \
             WHERE {keyed}"
        ))
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let key: Key = (row.get("tenant_id"), row.get("room_id"));
            let facts = RoomFacts {
                owner_account_id: row.get("owner_account_id"),
                access_number: row.get("access_number"),
                moderated: row.get("moderated"),
            };
            account_ids.insert((key.0, facts.owner_account_id));
            self.conferences.rooms.insert(key, facts);
        }
        let rows = sqlx::query(&format!(
            "SELECT tenant_id, room_id, session_id, leg_id, call_id, role, joined_at, left_at \
             FROM rm_rating_conference_stays WHERE {keyed}"
        ))
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let role = if row.get::<String, _>("role") == role_name(Role::Host) {
                Role::Host
            } else {
                Role::Guest
            };
            self.conferences.stays.insert(
                (
                    row.get("tenant_id"),
                    row.get("room_id"),
                    row.get("session_id"),
                    row.get("leg_id"),
                ),
                Stay {
                    call_id: row.get("call_id"),
                    role,
                    joined_at: row.get("joined_at"),
                    left_at: row.get("left_at"),
                },
            );
        }
        Ok(())
    }

    pub(super) fn apply_conference(&mut self, meta: &RecordedEvent, room: Uuid, event: &ConferenceEvent) {
        let tenant = meta.tenant_id;
        let conf = &mut self.conferences;
        match event {
            ConferenceEvent::ConferenceRoomCreated(e) => {
                conf.rooms.insert((tenant, room), facts(&e.settings));
                conf.rooms_touched.insert((tenant, room));
            }
            ConferenceEvent::ConferenceRoomUpdated(e) => {
                conf.rooms.insert((tenant, room), facts(&e.settings));
                conf.rooms_touched.insert((tenant, room));
            }
            ConferenceEvent::ParticipantJoined(e) => {
                let key = (tenant, room, e.session_id, e.leg_id);
                conf.stays.insert(
                    key,
                    Stay {
                        call_id: e.call_id,
                        role: e.role,
                        joined_at: e.at,
                        left_at: None,
                    },
                );
                conf.stays_touched.insert(key);
            }
            ConferenceEvent::ParticipantLeft(e) => leave(conf, (tenant, room, e.session_id, e.leg_id), e.at),
            ConferenceEvent::ParticipantKicked(e) => leave(conf, (tenant, room, e.session_id, e.leg_id), e.at),
            ConferenceEvent::ConferenceSessionEnded(e) => self.rate_session(meta, room, e.session_id, e.at),
            ConferenceEvent::ConferenceRoomRemoved(_)
            | ConferenceEvent::ConferenceSessionStarted(_)
            | ConferenceEvent::ParticipantMuted(_)
            | ConferenceEvent::ParticipantUnmuted(_)
            | ConferenceEvent::ConferenceRecordingStored(_)
            | ConferenceEvent::ParticipantMuteRequested(_)
            | ConferenceEvent::ParticipantKickRequested(_) => {}
        }
    }

    /// A session ended: price every stay to the owner, then forget the stays.
    fn rate_session(&mut self, meta: &RecordedEvent, room: Uuid, session: Uuid, ended_at: DateTime<Utc>) {
        let tenant = meta.tenant_id;
        let from = (tenant, room, session, Uuid::nil());
        let to = (tenant, room, session, Uuid::max());
        let keys: Vec<StayKey> = self.conferences.stays.range(from..=to).map(|(k, _)| *k).collect();
        if keys.is_empty() {
            return;
        }
        let mut stays = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(stay) = self.conferences.stays.remove(key) {
                stays.push((key.3, stay));
            }
            self.conferences.stays_touched.remove(key);
            self.conferences.stays_done.insert(*key);
        }
        let Some(facts) = self.conferences.rooms.get(&(tenant, room)).cloned() else {
            // A session in a room the log never created cannot happen (the decider refuses it).
            return;
        };
        let first_join = stays.iter().map(|(_, s)| s.joined_at).min().unwrap_or(ended_at);
        let destination = facts.access_number.clone().unwrap_or_default();
        let row_of = |leg_id: Uuid, stay: &Stay, billed_from: DateTime<Utc>, in_room_s: i32| {
            let mut row = ChargeRow::unrated(
                (tenant, stay.call_id),
                leg_id,
                facts.owner_account_id,
                billed_from,
                in_room_s,
                destination.clone(),
                meta.global_position,
            );
            row.service = "conferences";
            row
        };
        let seconds = |from: DateTime<Utc>, to: DateTime<Utc>| super::whole_seconds(to - from);
        let rated = self.conference_rate_card(tenant, &facts, first_join);
        let (card, tz) = match rated {
            Ok(found) => found,
            Err((tariff, why)) => {
                for (leg_id, stay) in &stays {
                    let left = stay.left_at.unwrap_or(ended_at);
                    let mut row = row_of(*leg_id, stay, stay.joined_at, seconds(stay.joined_at, left));
                    row.tariff_id = tariff;
                    row.unrated_reason = Some(why.clone());
                    self.post_conference_leg(row);
                }
                return;
            }
        };
        let session_facts = ConferenceSession {
            room_id: room,
            owner_account_id: facts.owner_account_id,
            moderated: facts.moderated,
            stays: stays
                .iter()
                .map(|(leg_id, stay)| ParticipantStay {
                    leg_id: *leg_id,
                    role: match stay.role {
                        Role::Host => billing_conference::Role::Moderator,
                        Role::Guest => billing_conference::Role::Participant,
                    },
                    joined_at: stay.joined_at,
                    left_at: stay.left_at.unwrap_or(ended_at),
                })
                .collect(),
        };
        match billing_conference::conference_charges(&session_facts, &card, tz) {
            Ok(charges) => {
                let revision = self
                    .revisions
                    .get(&(tenant, card.tariff_id, card.tariff_version))
                    .copied()
                    .unwrap_or(0);
                for charge in charges {
                    let Some((_, stay)) = stays.iter().find(|(leg, _)| *leg == charge.leg_id) else {
                        continue;
                    };
                    let in_room_s = i32::try_from(charge.in_room_s).unwrap_or(i32::MAX);
                    let mut row = row_of(charge.leg_id, stay, charge.billed_from, in_room_s);
                    row.status = "rated";
                    row.tariff_id = Some(card.tariff_id);
                    row.tariff_version = Some(i32::try_from(card.tariff_version).unwrap_or(i32::MAX));
                    row.tariff_revision = Some(i32::try_from(revision).unwrap_or(i32::MAX));
                    row.currency = Some(card.currency.clone());
                    row.matched_prefix = Some(charge.charge.explanation.matched_prefix.to_string());
                    row.billed_s = Some(i32::try_from(charge.charge.billed_s).unwrap_or(i32::MAX));
                    row.amount = Some(charge.charge.amount);
                    row.amount_exact = Some(charge.charge.explanation.amount_exact);
                    row.explanation = Some(format!(
                        "conference room {room}, paid by the owner: {}",
                        charge.charge.explanation.render()
                    ));
                    self.post_conference_leg(row);
                }
            }
            Err(e) => {
                for (leg_id, stay) in &stays {
                    let left = stay.left_at.unwrap_or(ended_at);
                    let mut row = row_of(*leg_id, stay, stay.joined_at, seconds(stay.joined_at, left));
                    row.tariff_id = Some(card.tariff_id);
                    row.unrated_reason = Some(e.to_string());
                    self.post_conference_leg(row);
                }
            }
        }
    }

    /// A participant leg's charge: posted, and counted in the reports as a `conference` leg
    /// (one answered "call" for its time in the room).
    fn post_conference_leg(&mut self, row: ChargeRow) {
        let traffic = Traffic {
            calls: 1,
            answered: 1,
            duration_s: i64::from(row.duration_s),
            billed_s: i64::from(row.billed_s.unwrap_or(0)),
            cost: row.amount.unwrap_or_default(),
        };
        let currency = row.currency.clone().unwrap_or_default();
        let prefix = row.matched_prefix.clone().unwrap_or_else(|| "unrated".to_string());
        self.count_traffic(
            row.tenant_id,
            traffic,
            row.answered_at,
            "conference",
            Uuid::nil(),
            &currency,
            Some(&prefix),
        );
        self.charges.push(row);
    }

    /// The access number's rate in the owner's tariff in force at `at`, and the owner's
    /// billing time zone; or the tariff (if any) and why there is none.
    fn conference_rate_card(
        &self,
        tenant: Uuid,
        facts: &RoomFacts,
        at: DateTime<Utc>,
    ) -> Result<(RateCard, Tz), (Option<Uuid>, String)> {
        let owner = (tenant, facts.owner_account_id);
        let tz: Tz = self
            .balances
            .get(&owner)
            .and_then(|b| b.billing_tz.parse().ok())
            .ok_or((None, "the owner's account is not open".to_string()))?;
        let Some(access_number) = &facts.access_number else {
            return Err((None, "the room has no access number to rate".to_string()));
        };
        let assignments = self.assignments.get(&owner).map(Vec::as_slice).unwrap_or_default();
        let tariff_id = account::tariff_in_force(assignments, at).ok_or((
            None,
            "no tariff assigned to the owner at the session's start".to_string(),
        ))?;
        let versions = self
            .tariffs
            .get(&(tenant, tariff_id))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let count = versions.partition_point(|v| v.version.effective_from <= at);
        let tariff = count.checked_sub(1).map(|i| &versions[i]).ok_or((
            Some(tariff_id),
            "no tariff version in force at the session's start".to_string(),
        ))?;
        let card = RateCard::for_destination(tariff, access_number).map_err(|e| (Some(tariff_id), e.to_string()))?;
        Ok((card, tz))
    }

    pub(super) async fn write_conferences(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let conf = &self.conferences;
        if !conf.rooms_touched.is_empty() {
            let keys: Vec<&Key> = conf.rooms_touched.iter().collect();
            let facts: Vec<&RoomFacts> = keys.iter().map(|k| &conf.rooms[*k]).collect();
            sqlx::query(
                "INSERT INTO rm_rating_conference_rooms (tenant_id, room_id, owner_account_id, access_number, moderated) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bool[]) \
                 ON CONFLICT (tenant_id, room_id) DO UPDATE SET owner_account_id = EXCLUDED.owner_account_id, \
                 access_number = EXCLUDED.access_number, moderated = EXCLUDED.moderated",
            )
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.owner_account_id).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.access_number.clone()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.moderated).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !conf.stays_done.is_empty() {
            let keys: Vec<&StayKey> = conf.stays_done.iter().collect();
            sqlx::query(
                "DELETE FROM rm_rating_conference_stays \
                 WHERE (tenant_id, room_id, session_id, leg_id) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[]))",
            )
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.3).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !conf.stays_touched.is_empty() {
            let keys: Vec<&StayKey> = conf.stays_touched.iter().collect();
            let stays: Vec<&Stay> = keys.iter().map(|k| &conf.stays[*k]).collect();
            sqlx::query(
                "INSERT INTO rm_rating_conference_stays (tenant_id, room_id, session_id, leg_id, call_id, role, \
                 joined_at, left_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], \
                 $7::timestamptz[], $8::timestamptz[]) \
                 ON CONFLICT (tenant_id, room_id, session_id, leg_id) DO UPDATE SET left_at = EXCLUDED.left_at",
            )
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.3).collect::<Vec<_>>())
            .bind(stays.iter().map(|s| s.call_id).collect::<Vec<_>>())
            .bind(stays.iter().map(|s| role_name(s.role).to_string()).collect::<Vec<_>>())
            .bind(stays.iter().map(|s| s.joined_at).collect::<Vec<_>>())
            .bind(stays.iter().map(|s| s.left_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

fn facts(settings: &domain::conference::RoomSettings) -> RoomFacts {
    RoomFacts {
        owner_account_id: settings.owner_account_id,
        access_number: settings.access_number.clone(),
        moderated: settings.moderated,
    }
}

fn leave(conf: &mut ConferenceFold, key: StayKey, at: DateTime<Utc>) {
    if let Some(stay) = conf.stays.get_mut(&key) {
        stay.left_at = Some(at);
        conf.stays_touched.insert(key);
    }
}
