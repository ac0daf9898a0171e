//! Conference charges: every participant leg billed to the room owner at the access number's rate.
//!
//! PortaBilling-style: the owner of the room pays for each leg from the moment the participant
//! enters until they leave, at the rate of the access number they dialled. A moderated room
//! runs from the first moderator's arrival to the last moderator's departure; time a
//! participant spends waiting outside that span is not billed. Partial seconds count as a
//! whole second (the leg was in the room during that second).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::rating::{self, Charge, RateCard, RatingError};

/// The most participant stays one session may bill.
pub const MAX_STAYS_PER_SESSION: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Host or moderator: starts and ends a moderated room.
    Moderator,
    Participant,
}

/// One leg's time in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantStay {
    pub leg_id: Uuid,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub left_at: DateTime<Utc>,
}

/// A finished conference session, as the call streams recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceSession {
    pub room_id: Uuid,
    pub owner_account_id: Uuid,
    pub moderated: bool,
    pub stays: Vec<ParticipantStay>,
}

/// One leg's charge, owed by the room's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConferenceCharge {
    pub owner_account_id: Uuid,
    pub room_id: Uuid,
    pub leg_id: Uuid,
    pub billed_from: DateTime<Utc>,
    pub in_room_s: u32,
    pub charge: Charge,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConferenceError {
    #[error("leg {leg_id} leaves before it joins")]
    LeftBeforeJoining { leg_id: Uuid },
    #[error("{count} stays exceed the limit of {MAX_STAYS_PER_SESSION}")]
    TooManyStays { count: usize },
    #[error(transparent)]
    Rating(#[from] RatingError),
}

/// The charges of a session: one per stay that overlaps the billable span, in input order.
pub fn conference_charges(
    session: &ConferenceSession,
    access_rate: &RateCard,
    billing_tz: Tz,
) -> Result<Vec<ConferenceCharge>, ConferenceError> {
    if session.stays.len() > MAX_STAYS_PER_SESSION {
        return Err(ConferenceError::TooManyStays {
            count: session.stays.len(),
        });
    }
    for stay in &session.stays {
        if stay.left_at < stay.joined_at {
            return Err(ConferenceError::LeftBeforeJoining { leg_id: stay.leg_id });
        }
    }
    let Some((room_open, room_close)) = billable_span(session) else {
        return Ok(vec![]);
    };
    let context = access_rate.context(billing_tz);
    let mut charges = Vec::with_capacity(session.stays.len());
    for stay in &session.stays {
        let from = stay.joined_at.max(room_open);
        let until = stay.left_at.min(room_close);
        if until <= from {
            continue;
        }
        let in_room_ms = (until - from).num_milliseconds();
        let in_room_s = u32::try_from((in_room_ms + 999) / 1000).unwrap_or(u32::MAX);
        let charge = rating::price(&context, from, in_room_s)?;
        charges.push(ConferenceCharge {
            owner_account_id: session.owner_account_id,
            room_id: session.room_id,
            leg_id: stay.leg_id,
            billed_from: from,
            in_room_s,
            charge,
        });
    }
    Ok(charges)
}

/// The total of a session's posted charges.
pub fn total(charges: &[ConferenceCharge]) -> Decimal {
    let mut sum = Decimal::ZERO;
    for charge in charges {
        sum += charge.charge.amount;
    }
    sum
}

/// When the room is open for billing: always for an unmoderated room, otherwise from the first
/// moderator in to the last moderator out. `None` when a moderated room never started.
fn billable_span(session: &ConferenceSession) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if !session.moderated {
        return Some((DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC));
    }
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for stay in &session.stays {
        if stay.role != Role::Moderator {
            continue;
        }
        span = Some(match span {
            None => (stay.joined_at, stay.left_at),
            Some((open, close)) => (open.min(stay.joined_at), close.max(stay.left_at)),
        });
    }
    span
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::tariff::{Prefix, Rate};

    fn card() -> RateCard {
        RateCard {
            tariff_id: Uuid::from_u128(9),
            tariff_version: 1,
            currency: "EUR".to_string(),
            rate: Rate::simple(
                Prefix::parse("4930").expect("valid prefix"),
                60,
                60,
                Decimal::from_str("0.03").expect("valid decimal"),
            ),
            offpeak_window: None,
            crossing: Default::default(),
            posting: Default::default(),
        }
    }

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).expect("valid timestamp")
    }

    fn stay(leg: u128, role: Role, from_min: i64, to_min: i64) -> ParticipantStay {
        ParticipantStay {
            leg_id: Uuid::from_u128(leg),
            role,
            joined_at: at(from_min),
            left_at: at(to_min),
        }
    }

    #[test]
    fn a_moderated_room_bills_only_while_a_moderator_is_in() {
        let session = ConferenceSession {
            room_id: Uuid::from_u128(1),
            owner_account_id: Uuid::from_u128(2),
            moderated: true,
            stays: vec![
                stay(10, Role::Participant, 0, 20),
                stay(11, Role::Moderator, 5, 15),
                stay(12, Role::Participant, 16, 18),
            ],
        };
        let charges = conference_charges(&session, &card(), chrono_tz::UTC).expect("rates");
        let seconds: Vec<u32> = charges.iter().map(|c| c.in_room_s).collect();
        assert_eq!(seconds, vec![600, 600]);
        assert_eq!(total(&charges), Decimal::from_str("0.6").expect("valid"));
    }

    #[test]
    fn a_moderated_room_without_moderator_costs_nothing() {
        let session = ConferenceSession {
            room_id: Uuid::from_u128(1),
            owner_account_id: Uuid::from_u128(2),
            moderated: true,
            stays: vec![stay(10, Role::Participant, 0, 20)],
        };
        assert_eq!(conference_charges(&session, &card(), chrono_tz::UTC), Ok(vec![]));
    }

    #[test]
    fn leaving_before_joining_is_an_error() {
        let session = ConferenceSession {
            room_id: Uuid::from_u128(1),
            owner_account_id: Uuid::from_u128(2),
            moderated: false,
            stays: vec![stay(10, Role::Participant, 5, 1)],
        };
        assert_eq!(
            conference_charges(&session, &card(), chrono_tz::UTC),
            Err(ConferenceError::LeftBeforeJoining {
                leg_id: Uuid::from_u128(10)
            })
        );
    }
}
