//! The `conferences` read model from a scripted room through the real room decider and store:
//! the live view while a session runs (who is in, roles, mutes), then one closed CDR leg per
//! participant with its seconds in the room, and a rebuild in batches of one equal to it.

use chrono::{DateTime, TimeDelta, Utc};
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore, StreamRef};
use domain::conference::{
    self, Actor, ConferenceCommand, ConferenceRoom, Role, RoomSettings, RoomState, SessionEndReason,
};
use expect_test::expect;
use projections::conferences::{Conferences, TABLES};
use projections::{rebuild, Runner};
use sqlx::PgPool;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x7e);
const ROOM: Uuid = Uuid::from_u128(0x200);
const HOST: Uuid = Uuid::from_u128(0x1e91);
const GUEST: Uuid = Uuid::from_u128(0x1e92);
const LATE: Uuid = Uuid::from_u128(0x1e93);

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn room(handler: &CommandHandler, command: ConferenceCommand) {
    handler
        .execute::<ConferenceRoom, _>(
            &CommandContext::new(Uuid::new_v4(), "test", "n", at("2024-03-01T00:00:00Z")),
            StreamRef::of::<ConferenceRoom>(TENANT, &ROOM),
            |s: &RoomState| conference::decide(&command, s),
        )
        .await
        .unwrap();
}

async fn rows(pool: &PgPool, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
    rows.iter().map(|r| format!("{r}\n")).collect()
}

async fn catch_up(store: &EventStore) {
    Runner::new(store.clone(), Conferences)
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_room_shows_live_participants_then_one_closed_leg_each() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let handler = CommandHandler::new(store.clone());
    let start = at("2024-03-04T10:00:00Z");
    let s = |secs: i64| start + TimeDelta::seconds(secs);
    room(
        &handler,
        ConferenceCommand::Create {
            room_id: ROOM,
            tenant_id: TENANT,
            settings: RoomSettings {
                name: "Board".into(),
                owner_account_id: Uuid::from_u128(0xa1),
                host_code: "1234".into(),
                guest_code: "5678".into(),
                moderated: true,
                max_participants: 5,
                record: false,
                access_number: Some("+493012345999".into()),
            },
            at: start,
        },
    )
    .await;
    for command in [
        ConferenceCommand::StartSession {
            session_id: Uuid::from_u128(0x5e55),
            node_id: "media-1".into(),
            at: s(0),
        },
        ConferenceCommand::Join {
            leg_id: HOST,
            call_id: Uuid::from_u128(0xca11),
            role: Role::Host,
            at: s(0),
        },
        ConferenceCommand::Join {
            leg_id: GUEST,
            call_id: Uuid::from_u128(0xca12),
            role: Role::Guest,
            at: s(30),
        },
        ConferenceCommand::SetMuted {
            leg_id: GUEST,
            muted: true,
            by: Actor::Participant,
            at: s(40),
        },
    ] {
        room(&handler, command).await;
    }
    catch_up(&store).await;
    let live = rows(
        &db.pool,
        "SELECT concat_ws(' | ', name, session_node, participants, hosts, muted) FROM rm_live_conference_rooms",
    )
    .await;
    expect![[r#"
        Board | media-1 | 2 | 1 | 1
    "#]]
    .assert_eq(&live);
    let roster = rows(
        &db.pool,
        "SELECT concat_ws(' | ', room_name, right(leg_id::text, 4), role, muted) FROM rm_live_conference_participants \
         ORDER BY joined_at",
    )
    .await;
    expect![[r#"
        Board | 1e91 | host | f
        Board | 1e92 | guest | t
    "#]]
    .assert_eq(&roster);

    for command in [
        ConferenceCommand::Join {
            leg_id: LATE,
            call_id: Uuid::from_u128(0xca13),
            role: Role::Guest,
            at: s(100),
        },
        ConferenceCommand::Kick {
            leg_id: LATE,
            by: Actor::Host { leg_id: HOST },
            at: s(160),
        },
        ConferenceCommand::SetMuted {
            leg_id: GUEST,
            muted: false,
            by: Actor::Participant,
            at: s(200),
        },
        ConferenceCommand::Leave {
            leg_id: GUEST,
            at: s(1500),
        },
        ConferenceCommand::EndSession {
            reason: SessionEndReason::LastHostLeft,
            at: s(1800),
        },
    ] {
        room(&handler, command).await;
    }
    catch_up(&store).await;
    assert_eq!(
        rows(&db.pool, "SELECT room_id::text FROM rm_live_conference_rooms").await,
        ""
    );
    let legs = rows(
        &db.pool,
        "SELECT concat_ws(' | ', right(leg_id::text, 4), right(call_id::text, 4), role, \
         to_char(joined_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), to_char(left_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), \
         left_how, in_room_s, mutes, muted) FROM rm_conference_legs ORDER BY joined_at",
    )
    .await;
    expect![[r#"
        1e91 | ca11 | host | 10:00:00 | 10:30:00 | left | 1800 | 0 | f
        1e92 | ca12 | guest | 10:00:30 | 10:25:00 | left | 1470 | 1 | f
        1e93 | ca13 | guest | 10:01:40 | 10:02:40 | kicked | 60 | 0 | f
    "#]]
    .assert_eq(&legs);
    let rooms = rows(
        &db.pool,
        "SELECT concat_ws(' | ', name, right(owner_account_id::text, 2), access_number, moderated, sessions, \
         coalesce(session_id::text, 'no session')) FROM rm_conference_rooms",
    )
    .await;
    expect![[r#"
        Board | a1 | +493012345999 | t | 1 | no session
    "#]]
    .assert_eq(&rooms);

    // A rebuild one event at a time gives the same rows.
    rebuild::create_schema(&db.pool, "shadow_conferences", TABLES)
        .await
        .unwrap();
    Runner::new(store.clone(), Conferences)
        .in_schema("shadow_conferences")
        .batch_size(1)
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    for table in TABLES {
        let diff = rebuild::diff(&db.pool, "shadow_conferences", table, 10).await.unwrap();
        assert!(diff.is_empty(), "{table}: {diff:?}");
    }
}
