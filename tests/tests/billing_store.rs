//! Billing's aggregates through the spine: accounts are event streams in the real store,
//! and concurrent reservations never overdraw a prepaid balance.

// Tests stand in for the binary: they may read the clock.
#![allow(clippy::disallowed_methods)]

use billing::account::{AccountCommand, AccountKind, AccountState};
use billing::aggregates::Account;
use billing::rating::RateCard;
use billing::tariff::{Prefix, Rate};
use chrono::Utc;
use commands::testing::TestDb;
use commands::{CommandContext, CommandError, CommandHandler, EventStore, StreamRef};
use rust_decimal::Decimal;
use std::str::FromStr;
use uuid::Uuid;

fn ctx() -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "n", Utc::now())
}

fn card() -> RateCard {
    RateCard {
        tariff_id: Uuid::from_u128(9),
        tariff_version: 1,
        currency: "EUR".into(),
        rate: Rate::simple(Prefix::parse("49").unwrap(), 60, 60, Decimal::from_str("0.10").unwrap()),
        offpeak_window: None,
        crossing: Default::default(),
        posting: Default::default(),
    }
}

async fn account_command(
    handler: &CommandHandler,
    tenant: Uuid,
    account: Uuid,
    command: AccountCommand,
) -> Result<commands::Outcome, CommandError<billing::account::AccountRejection>> {
    handler
        .execute::<Account, _>(
            &ctx(),
            StreamRef::of::<Account>(tenant, &account),
            |state: &AccountState| billing::account::decide(&command, state),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_overdraw_a_prepaid_account() {
    let db = TestDb::new().await.unwrap();
    let handler = CommandHandler::new(EventStore::new(db.pool.clone()));
    let tenant = Uuid::new_v4();
    let account = Uuid::new_v4();
    account_command(
        &handler,
        tenant,
        account,
        AccountCommand::Open {
            account_id: account,
            tenant_id: tenant,
            kind: AccountKind::Prepaid,
            currency: "EUR".into(),
            billing_tz: chrono_tz::Europe::Berlin,
        },
    )
    .await
    .unwrap();
    account_command(
        &handler,
        tenant,
        account,
        AccountCommand::TopUp {
            payment_id: Uuid::new_v4(),
            amount: Decimal::from_str("1.00").unwrap(),
        },
    )
    .await
    .unwrap();

    // Twelve calls race for 1.00 at 0.10/min, each capped at 2 minutes (0.20).
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            let command = AccountCommand::Reserve {
                reservation_id: Uuid::new_v4(),
                call_id: Uuid::new_v4(),
                rate_card: card(),
                now: Utc::now(),
                duration_cap_s: Some(120),
            };
            account_command(&handler, tenant, account, command).await
        }));
    }
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(CommandError::Rejected(_)) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(granted, 5, "exactly 1.00 / 0.20 calls are authorized");

    let loaded = handler
        .load::<Account>(&StreamRef::of::<Account>(tenant, &account))
        .await
        .unwrap();
    assert_eq!(loaded.state.reserved, Decimal::from_str("1.00").unwrap());
    assert_eq!(loaded.state.available(), Decimal::ZERO);
    assert!(loaded.state.available() >= Decimal::ZERO, "never below zero");

    // The stored billing events chain like any other stream.
    let report = commands::audit::verify(handler.store(), Some(tenant)).await.unwrap();
    assert!(report.first_break.is_none());
    assert_eq!(report.events, 7, "open, top-up and five reservations");
}
