//! `ledgerline simulate --conferences K`: conference sessions through the real room decider
//! (`domain::conference::decide`), deterministically from the simulator's seed.
//!
//! Each simulated tenant gets one room (created through the command handler, owned by its
//! postpaid account). Sessions follow each other in hourly slots from 07:00: a host joins
//! first, guests trickle in, some mute themselves for a while, one in ten is kicked by the
//! host, the others leave, and the session ends (the host and anyone left leave with it).

use anyhow::anyhow;
use billing::conference::{self as billing_conference, ConferenceSession, ParticipantStay};
use billing::rating::RateCard;
use billing::CompiledTariff;
use chrono::{DateTime, TimeDelta, Utc};
use commands::{CommandContext, CommandHandler, Expected, NewEvent, StreamRef, StreamWrite};
use domain::conference::{
    self as room, Actor, ConferenceCommand, ConferenceRoom, Role, RoomSettings, RoomState, SessionEndReason,
};
use domain::Aggregate;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::simulate::{Rng, Summary};

/// The room every simulated tenant gets: its id, and the codes the demo prints.
pub const HOST_CODE: &str = "1234";
pub const GUEST_CODE: &str = "5678";
pub const ACCESS_NUMBER: &str = "+493012345999";

pub fn room_id(tenant: Uuid) -> Uuid {
    Uuid::new_v5(&tenant, b"room")
}

/// One tenant as far as conferences need it.
pub struct ConferenceTenant<'a> {
    pub tenant_id: Uuid,
    /// The postpaid account that pays for the room's legs.
    pub owner_account_id: Uuid,
    /// Moderated rooms wait for the host and end when the host leaves.
    pub moderated: bool,
    /// The owner's tariff, which prices the access number.
    pub tariff: &'a CompiledTariff,
}

/// A participant leg's charge to the room owner, to settle and invoice like a call's.
pub struct OwnerCharge {
    pub account_id: Uuid,
    /// The participant's call: the charge's id on the account and the invoice.
    pub call_id: Uuid,
    pub billed_from: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub prefix: String,
    pub amount: Decimal,
}

/// Create each tenant's room, then decide `sessions` sessions over them (round robin); return
/// the writes, one per room, to append with the simulator's next batch, and each leg's charge
/// to the owner (`billing::conference`, as the `billing` projection prices it).
pub async fn simulate(
    handler: &CommandHandler,
    rng: &mut Rng,
    tenants: &[ConferenceTenant<'_>],
    sessions: u32,
    day_start: DateTime<Utc>,
    setup_at: DateTime<Utc>,
    summary: &mut Summary,
) -> anyhow::Result<(Vec<StreamWrite>, Vec<OwnerCharge>)> {
    let mut rooms = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let id = room_id(tenant.tenant_id);
        let create = ConferenceCommand::Create {
            room_id: id,
            tenant_id: tenant.tenant_id,
            settings: RoomSettings {
                name: "Team room".into(),
                owner_account_id: tenant.owner_account_id,
                host_code: HOST_CODE.into(),
                guest_code: GUEST_CODE.into(),
                moderated: tenant.moderated,
                max_participants: 10,
                record: false,
                access_number: Some(ACCESS_NUMBER.into()),
            },
            at: setup_at,
        };
        let stream = StreamRef::of::<ConferenceRoom>(tenant.tenant_id, &id);
        handler
            .execute::<ConferenceRoom, _>(
                &CommandContext::new(rng.uuid(), "simulator", "sim", setup_at),
                stream.clone(),
                |s: &RoomState| room::decide(&create, s),
            )
            .await
            .map_err(|e| anyhow!("conference room: {e}"))?;
        let loaded = handler.load::<ConferenceRoom>(&stream).await?;
        rooms.push((tenant, loaded.state, loaded.version, Vec::<NewEvent>::new()));
    }
    if rooms.is_empty() {
        return Ok((vec![], vec![]));
    }
    let mut owed = Vec::new();
    for k in 0..sessions as usize {
        let (tenant, state, _, pending) = &mut rooms[k % tenants.len()];
        let slot = (k / tenants.len()) as i64;
        let start = day_start + TimeDelta::hours(7 + slot);
        let mut stays: Vec<(Uuid, ParticipantStay)> = Vec::new();
        let mut ended_at = start;
        for (at, command) in session_commands(rng, start, tenant.moderated) {
            let events = room::decide(&command, state).map_err(|e| anyhow!("conference decider: {e}"))?;
            for event in &events {
                note_stay(&mut stays, event);
                *state = ConferenceRoom::evolve(std::mem::take(state), event);
                pending.push(NewEvent::from_domain(rng.uuid(), event, sim_meta(), at));
            }
            ended_at = at;
        }
        summary.conferences += 1;
        owed.extend(owner_charges(tenant, room_id(tenant.tenant_id), &stays, ended_at));
    }
    let mut writes = Vec::new();
    for (tenant, _, version, pending) in rooms {
        if pending.is_empty() {
            continue;
        }
        summary.events += pending.len() as u64;
        writes.push(StreamWrite {
            tenant_id: tenant.tenant_id,
            stream_id: ConferenceRoom::stream_id(&room_id(tenant.tenant_id)),
            expected: Expected::Exact(version),
            events: pending,
        });
    }
    Ok((writes, owed))
}

/// Follow a session's participants from its events: who joined (with their call) and when
/// they left.
fn note_stay(stays: &mut Vec<(Uuid, ParticipantStay)>, event: &room::ConferenceEvent) {
    use room::ConferenceEvent as E;
    let (leg_id, at) = match event {
        E::ParticipantJoined(e) => {
            stays.push((
                e.call_id,
                ParticipantStay {
                    leg_id: e.leg_id,
                    role: match e.role {
                        Role::Host => billing_conference::Role::Moderator,
                        Role::Guest => billing_conference::Role::Participant,
                    },
                    joined_at: e.at,
                    left_at: e.at,
                },
            ));
            return;
        }
        E::ParticipantLeft(e) => (e.leg_id, e.at),
        E::ParticipantKicked(e) => (e.leg_id, e.at),
        _ => return,
    };
    if let Some((_, stay)) = stays.iter_mut().find(|(_, s)| s.leg_id == leg_id) {
        stay.left_at = at;
    }
}

/// The owner's charge for each stay of an ended session; none when the deck has no rate for
/// the access number (the projection then shows the legs unrated).
fn owner_charges(
    tenant: &ConferenceTenant<'_>,
    room: Uuid,
    stays: &[(Uuid, ParticipantStay)],
    ended_at: DateTime<Utc>,
) -> Vec<OwnerCharge> {
    let Ok(card) = RateCard::for_destination(tenant.tariff, ACCESS_NUMBER) else {
        return vec![];
    };
    let session = ConferenceSession {
        room_id: room,
        owner_account_id: tenant.owner_account_id,
        moderated: tenant.moderated,
        stays: stays.iter().map(|(_, stay)| *stay).collect(),
    };
    let Ok(charges) = billing_conference::conference_charges(&session, &card, chrono_tz::Europe::Berlin) else {
        return vec![];
    };
    let mut out = Vec::with_capacity(charges.len());
    for charge in charges {
        if let Some((call_id, _)) = stays.iter().find(|(_, s)| s.leg_id == charge.leg_id) {
            out.push(OwnerCharge {
                account_id: tenant.owner_account_id,
                call_id: *call_id,
                billed_from: charge.billed_from,
                ended_at,
                prefix: charge.charge.explanation.matched_prefix.to_string(),
                amount: charge.charge.amount,
            });
        }
    }
    out
}

fn sim_meta() -> commands::Metadata {
    commands::Metadata {
        actor: Some("simulator".to_string()),
        node_id: Some("sim-media".to_string()),
        ..commands::Metadata::default()
    }
}

/// The commands of one session of at most 50 minutes from `start`, in time order.
fn session_commands(rng: &mut Rng, start: DateTime<Utc>, moderated: bool) -> Vec<(DateTime<Utc>, ConferenceCommand)> {
    let at = |s: i64| start + TimeDelta::seconds(s);
    const END_S: i64 = 3000;
    let mut commands: Vec<(i64, u32, ConferenceCommand)> = Vec::new();
    let mut seq = 0u32;
    let mut push = |s: i64, command: ConferenceCommand| {
        seq += 1;
        commands.push((s, seq, command));
    };
    push(
        0,
        ConferenceCommand::StartSession {
            session_id: rng.uuid(),
            node_id: "sim-media".into(),
            at: at(0),
        },
    );
    let host = rng.uuid();
    push(
        1,
        ConferenceCommand::Join {
            leg_id: host,
            call_id: rng.uuid(),
            role: Role::Host,
            at: at(1),
        },
    );
    let guests = 1 + rng.below(5) as i64;
    let mut joined_s = 1;
    for _ in 0..guests {
        joined_s += 5 + rng.below(55) as i64;
        let leg = rng.uuid();
        push(
            joined_s,
            ConferenceCommand::Join {
                leg_id: leg,
                call_id: rng.uuid(),
                role: Role::Guest,
                at: at(joined_s),
            },
        );
        let leave_s = (joined_s + 70 + rng.below(2400) as i64).min(END_S - 1);
        if rng.chance(30) {
            push(
                joined_s + 5,
                ConferenceCommand::SetMuted {
                    leg_id: leg,
                    muted: true,
                    by: Actor::Participant,
                    at: at(joined_s + 5),
                },
            );
            push(
                joined_s + 60,
                ConferenceCommand::SetMuted {
                    leg_id: leg,
                    muted: false,
                    by: Actor::Participant,
                    at: at(joined_s + 60),
                },
            );
        }
        let goes = if rng.chance(10) {
            ConferenceCommand::Kick {
                leg_id: leg,
                by: Actor::Host { leg_id: host },
                at: at(leave_s),
            }
        } else {
            ConferenceCommand::Leave {
                leg_id: leg,
                at: at(leave_s),
            }
        };
        push(leave_s, goes);
    }
    push(
        END_S,
        ConferenceCommand::EndSession {
            reason: if moderated {
                SessionEndReason::LastHostLeft
            } else {
                SessionEndReason::Empty
            },
            at: at(END_S),
        },
    );
    // Stable: commands at the same second keep the order they were made in.
    commands.sort_by_key(|(s, n, _)| (*s, *n));
    commands.into_iter().map(|(s, _, c)| (at(s), c)).collect()
}
