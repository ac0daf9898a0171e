//! The reference conference case on a virtual clock: the room's events, decided by the
//! ConferenceRoom decider, give each participant's stay, and billing charges the owner
//! 0.03/min: 30, 25 and 20 minutes cost exactly 0.90, 0.75 and 0.60.

use std::str::FromStr;

use billing::conference::{conference_charges, total, ConferenceSession, ParticipantStay, Role as BillingRole};
use billing::rating::RateCard;
use billing::tariff::{Prefix, Rate};
use chrono::{DateTime, Utc};
use domain::conference::{
    self, ConferenceCommand, ConferenceEvent, ConferenceRoom, Role, RoomSettings, SessionEndReason,
};
use domain::Aggregate;
use rust_decimal::Decimal;
use uuid::Uuid;

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).expect("valid timestamp")
}

#[test]
fn the_reference_conference_bills_the_owner_per_participant() {
    let owner = Uuid::from_u128(42);
    let room_id = Uuid::from_u128(1);
    let mut log: Vec<ConferenceEvent> = Vec::new();
    let mut run = |command: ConferenceCommand| {
        let state = ConferenceRoom::fold(&log);
        let events = conference::decide(&command, &state).unwrap_or_else(|e| panic!("{command:?}: {e}"));
        log.extend(events);
    };
    run(ConferenceCommand::Create {
        room_id,
        tenant_id: Uuid::from_u128(2),
        settings: RoomSettings {
            name: "Board".into(),
            owner_account_id: owner,
            host_code: "1111".into(),
            guest_code: "2222".into(),
            moderated: false,
            max_participants: 10,
            record: false,
            access_number: Some("7000".into()),
        },
        at: at(0),
    });
    run(ConferenceCommand::StartSession {
        session_id: Uuid::from_u128(3),
        node_id: "media-1".into(),
        at: at(0),
    });
    let legs = [
        (10u128, Role::Host, 30i64),
        (11, Role::Guest, 25),
        (12, Role::Guest, 20),
    ];
    for (leg, role, _) in legs {
        run(ConferenceCommand::Join {
            leg_id: Uuid::from_u128(leg),
            call_id: Uuid::from_u128(leg + 100),
            role,
            at: at(0),
        });
    }
    for (leg, _, minutes) in [legs[2], legs[1]] {
        run(ConferenceCommand::Leave {
            leg_id: Uuid::from_u128(leg),
            at: at(minutes),
        });
    }
    // The last one in ends the session: the decider makes them leave at the end.
    run(ConferenceCommand::EndSession {
        reason: SessionEndReason::Empty,
        at: at(30),
    });

    let stays = conference::stays(&log);
    let session = ConferenceSession {
        room_id,
        owner_account_id: owner,
        moderated: false,
        stays: stays
            .iter()
            .map(|s| ParticipantStay {
                leg_id: s.leg_id,
                role: match s.role {
                    Role::Host => BillingRole::Moderator,
                    Role::Guest => BillingRole::Participant,
                },
                joined_at: s.joined_at,
                left_at: s.left_at,
            })
            .collect(),
    };
    let card = RateCard {
        tariff_id: Uuid::from_u128(9),
        tariff_version: 1,
        currency: "EUR".to_string(),
        rate: Rate::simple(
            Prefix::parse("7000").expect("valid prefix"),
            60,
            60,
            Decimal::from_str("0.03").expect("valid"),
        ),
        offpeak_window: None,
        crossing: Default::default(),
        posting: Default::default(),
    };
    let charges = conference_charges(&session, &card, chrono_tz::UTC).expect("rates");
    let by_leg: Vec<(u128, Decimal)> = charges.iter().map(|c| (c.leg_id.as_u128(), c.charge.amount)).collect();
    let d = |s: &str| Decimal::from_str(s).expect("valid");
    // Decimal equality is numeric: 0.90 == 0.90000 (posted at the tariff's precision).
    assert_eq!(by_leg, vec![(10, d("0.90")), (11, d("0.75")), (12, d("0.60"))]);
    assert!(charges.iter().all(|c| c.owner_account_id == owner));
    assert_eq!(total(&charges), Decimal::from_str("2.25").unwrap());
}
