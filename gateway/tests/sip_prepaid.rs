//! Prepaid enforcement on the wire: a call from a prepaid account is authorized against
//! its available funds, reserved, cut on both legs at its maximum duration with the end
//! reason `credit_exhausted`, and settled; with no funds left the next call gets 402.

use std::str::FromStr;

use billing::account::{AccountCommand, AccountKind, AccountState};
use billing::aggregates::{Account, Tariff};
use billing::tariff::{Crossing, Prefix, Rate, TariffCommand, TariffState};
use billing::Posting;
use chrono::{DateTime, Utc};
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore, StreamRef};
use rust_decimal::Decimal;
use uuid::Uuid;

mod common;

use common::{register, sipp, start, tenant_with_extensions, until, Callee};

#[allow(clippy::disallowed_methods)] // A live node runs on the wall clock; so does its account.
fn wall() -> DateTime<Utc> {
    Utc::now()
}

fn ctx() -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "test", wall())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepaid_calls_are_cut_at_their_maximum_duration_and_refused_without_funds() {
    let db = TestDb::new().await.unwrap();
    let node = start(&db);
    let tenant: Uuid = tenant_with_extensions(&db, 2).await.parse().unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));

    // 6.00 per minute, billed per second: 0.10 a second. 0.30 of credit buys 3 seconds.
    let tariff = Uuid::new_v4();
    let now = wall();
    for command in [
        TariffCommand::Create {
            tariff_id: tariff,
            tenant_id: tenant,
            name: "per second".into(),
            currency: "EUR".into(),
        },
        TariffCommand::PublishVersion {
            effective_from: now,
            now,
            rates: vec![Rate::simple(Prefix::parse("1").unwrap(), 1, 1, Decimal::from(6))],
            offpeak_window: None,
            crossing: Crossing::default(),
            posting: Posting::default(),
        },
    ] {
        handler
            .execute::<Tariff, _>(&ctx(), StreamRef::of::<Tariff>(tenant, &tariff), |s: &TariffState| {
                billing::tariff::decide(&command, s)
            })
            .await
            .unwrap();
    }
    let account = Uuid::new_v4();
    for command in [
        AccountCommand::Open {
            account_id: account,
            tenant_id: tenant,
            kind: AccountKind::Prepaid,
            currency: "EUR".into(),
            billing_tz: chrono_tz::UTC,
        },
        AccountCommand::AssignTariff {
            tariff_id: tariff,
            effective_from: now,
            now,
        },
        AccountCommand::TopUp {
            payment_id: Uuid::new_v4(),
            amount: Decimal::from_str("0.30").unwrap(),
        },
    ] {
        handler
            .execute::<Account, _>(
                &ctx(),
                StreamRef::of::<Account>(tenant, &account),
                |s: &AccountState| billing::account::decide(&command, s),
            )
            .await
            .unwrap();
    }
    until(&db.pool, 30, "SELECT count(*) = 1 FROM rm_rating_assignments").await;
    until(&db.pool, 30, "SELECT balance = 0.30 FROM rm_balances").await;

    let callee = Callee::start("uas_answer.xml");
    register(&node, 1001, callee.port);
    let line = "1000;acme.test;1001;[authentication username=1000 password=pass-1000]".to_string();
    assert!(
        sipp(&node, "uac_cut.xml", std::slice::from_ref(&line), 1),
        "the caller is hung up by the node"
    );
    assert!(callee.passed(), "the callee is hung up by the node");

    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'ChargeSettled'",
    )
    .await;
    let (max, reason, by): (i64, String, String) = sqlx::query_as(
        "SELECT (a.payload->>'max_duration_s')::bigint, e.payload->>'reason', e.payload->>'hangup_by' \
         FROM events a JOIN events e ON e.stream_id = a.stream_id \
         WHERE a.event_type = 'CallAuthorized' AND e.event_type = 'CallEnded'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((max, reason.as_str(), by.as_str()), (3, "credit_exhausted", "system"));
    until(&db.pool, 30, "SELECT open_reservations = 0 FROM rm_balances").await;
    let (balance, available): (Decimal, Decimal) =
        sqlx::query_as("SELECT balance, available FROM rm_balances_view WHERE account_id = $1")
            .bind(account)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        balance >= Decimal::ZERO,
        "a prepaid account never goes below zero: {balance}"
    );
    assert!(
        available < Decimal::from_str("0.10").unwrap(),
        "the call spent the credit: {available}"
    );

    // Nothing left for even one second: refused with 402 before anything rings.
    assert!(sipp(&node, "uac_expect_402.xml", &[line], 1));
    until(
        &db.pool,
        30,
        "SELECT count(*) = 1 FROM events WHERE event_type = 'CallRejected' AND payload->>'sip_status' = '402'",
    )
    .await;
    let legs: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'LegCreated'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(legs, 1, "the refused call never reached the callee");
}
