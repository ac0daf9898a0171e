//! The `billing` and `invoices` read models from scripted calls through the real deciders and
//! store: whole-output snapshots of CDRs, charges, balances and invoices (including every
//! reference case of billing-reference.md that involves calls), rebuild equality, time travel.

use std::str::FromStr;

use billing::account::{AccountCommand, AccountKind, AccountState};
use billing::aggregates::{Account, InvoiceBook, Tariff};
use billing::invoice::{BillingPeriod, InvoiceCommand, InvoiceState, Service, TaxMode, TaxPolicy};
use billing::rating::RateCard;
use billing::tariff::{Crossing, PeriodPrices, Prefix, Rate, TariffCommand, TariffState};
use billing::{OffPeakWindow, Posting};
use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use commands::testing::TestDb;
use commands::{CommandContext, CommandHandler, EventStore, StreamRef};
use domain::call::{Call, CallCommand, CallInitiated, CallState, Direction, Party};
use expect_test::expect;
use projections::billing::Billing;
use projections::invoices::Invoices;
use projections::{rebuild, Runner, Until};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x7e);
const OTHER_TENANT: Uuid = Uuid::from_u128(0x7f);

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ctx(now: DateTime<Utc>) -> CommandContext {
    CommandContext::new(Uuid::new_v4(), "test", "n", now)
}

struct World {
    handler: CommandHandler,
    /// Every command's clock: the scripted world has no other.
    now: DateTime<Utc>,
}

impl World {
    async fn tariff(&self, tenant: Uuid, id: Uuid, crossing: Crossing, rates: Vec<Rate>) {
        let create = TariffCommand::Create {
            tariff_id: id,
            tenant_id: tenant,
            name: format!("tariff {crossing:?}"),
            currency: "EUR".into(),
        };
        let publish = TariffCommand::PublishVersion {
            effective_from: self.now,
            now: self.now,
            rates,
            offpeak_window: Some(
                OffPeakWindow::new(
                    NaiveTime::from_hms_opt(19, 0, 0).unwrap(),
                    NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
                )
                .unwrap(),
            ),
            crossing,
            posting: Posting::default(),
        };
        for command in [create, publish] {
            self.handler
                .execute::<Tariff, _>(
                    &ctx(self.now),
                    StreamRef::of::<Tariff>(tenant, &id),
                    |s: &TariffState| billing::tariff::decide(&command, s),
                )
                .await
                .unwrap();
        }
    }

    async fn account(&self, tenant: Uuid, id: Uuid, command: AccountCommand) {
        self.handler
            .execute::<Account, _>(
                &ctx(self.now),
                StreamRef::of::<Account>(tenant, &id),
                |s: &AccountState| billing::account::decide(&command, s),
            )
            .await
            .unwrap();
    }

    async fn open_account(&self, tenant: Uuid, id: Uuid, kind: AccountKind, tariff: Uuid, top_up: &str) {
        self.account(
            tenant,
            id,
            AccountCommand::Open {
                account_id: id,
                tenant_id: tenant,
                kind,
                currency: "EUR".into(),
                billing_tz: chrono_tz::Europe::Berlin,
            },
        )
        .await;
        self.account(
            tenant,
            id,
            AccountCommand::AssignTariff {
                tariff_id: tariff,
                effective_from: self.now,
                now: self.now,
            },
        )
        .await;
        if top_up != "0" {
            self.account(
                tenant,
                id,
                AccountCommand::TopUp {
                    payment_id: Uuid::new_v4(),
                    amount: d(top_up),
                },
            )
            .await;
        }
        self.invoice(
            tenant,
            id,
            InvoiceCommand::Open {
                account_id: id,
                tenant_id: tenant,
                currency: "EUR".into(),
                billing_tz: chrono_tz::Europe::Berlin,
            },
        )
        .await;
    }

    async fn invoice(&self, tenant: Uuid, account: Uuid, command: InvoiceCommand) {
        self.handler
            .execute::<InvoiceBook, _>(
                &ctx(self.now),
                StreamRef::of::<InvoiceBook>(tenant, &account),
                |s: &InvoiceState| billing::invoice::decide(&command, s),
            )
            .await
            .unwrap();
    }

    async fn call(&self, tenant: Uuid, id: Uuid, command: CallCommand) {
        self.handler
            .execute::<Call, _>(&ctx(self.now), StreamRef::of::<Call>(tenant, &id), |s: &CallState| {
                domain::call::decide(&command, s)
            })
            .await
            .unwrap();
    }

    /// An internal call from 1001 (Alice) to 1002 starts: no trunk, no account.
    async fn internal_call(&self, call: Uuid, start: DateTime<Utc>) {
        self.call(
            TENANT,
            call,
            CallCommand::Initiate(CallInitiated {
                call_id: call,
                tenant_id: TENANT,
                direction: Direction::Internal,
                caller: "1001".into(),
                caller_name: "Alice".into(),
                callee: "1002".into(),
                did: None,
                trunk_id: None,
                account_id: None,
                at: start,
            }),
        )
        .await;
    }

    /// A whole call: initiated, authorized (reserving on a prepaid account), ringing, answered
    /// after `ring_s`, ended `talk_s` later by the caller.
    #[allow(clippy::too_many_arguments)]
    async fn answered_call(
        &self,
        n: u128,
        account: Uuid,
        callee: &str,
        start: DateTime<Utc>,
        talk_s: i64,
        reserve: Option<(&RateCard, Option<u32>)>,
    ) -> Uuid {
        let call = Uuid::from_u128(0xca11_0000 + n);
        let leg = Uuid::from_u128(0x1e90_0000 + n);
        self.call(
            TENANT,
            call,
            CallCommand::Initiate(CallInitiated {
                call_id: call,
                tenant_id: TENANT,
                direction: Direction::Outbound,
                caller: "1001".into(),
                caller_name: "Alice".into(),
                callee: callee.into(),
                did: None,
                trunk_id: Some(Uuid::from_u128(0x7247)),
                account_id: Some(account),
                at: start,
            }),
        )
        .await;
        let mut reservation_id = None;
        if let Some((card, cap)) = reserve {
            let id = Uuid::from_u128(0x7e5e_0000 + n);
            self.account(
                TENANT,
                account,
                AccountCommand::Reserve {
                    reservation_id: id,
                    call_id: call,
                    rate_card: card.clone(),
                    now: start,
                    duration_cap_s: cap,
                },
            )
            .await;
            reservation_id = Some(id);
        }
        let s = |secs: i64| start + TimeDelta::seconds(secs);
        for command in [
            CallCommand::Authorize {
                max_duration_s: None,
                reservation_id,
                at: s(0),
            },
            CallCommand::CreateLeg {
                leg_id: leg,
                target: format!("sip:{callee}@trunk"),
                trunk_id: Some(Uuid::from_u128(0x7247)),
                at: s(0),
            },
            CallCommand::Ring { leg_id: leg, at: s(2) },
            CallCommand::Answer { leg_id: leg, at: s(5) },
            CallCommand::End {
                hangup_by: Party::Caller,
                sip_status: 200,
                reason: None,
                at: s(5 + talk_s),
                media: vec![],
            },
        ] {
            self.call(TENANT, call, command).await;
        }
        call
    }
}

fn rates() -> Vec<Rate> {
    let p = |s: &str| Prefix::parse(s).unwrap();
    let mut grace = Rate::simple(p("4940"), 30, 6, d("0.02"));
    grace.grace_period_s = 5;
    let mut fee = Rate::simple(p("4990"), 60, 60, d("0.10"));
    fee.connection_fee = d("0.20");
    let mut peak = Rate::simple(p("4970"), 60, 60, d("0.10"));
    peak.offpeak = Some(PeriodPrices {
        first_price_per_minute: d("0.04"),
        next_price_per_minute: d("0.04"),
    });
    vec![
        Rate::simple(p("4930"), 30, 6, d("0.02")),
        grace,
        Rate::simple(p("4950"), 1, 1, d("0.06")),
        Rate::simple(p("4960"), 60, 60, d("0.05")),
        peak,
        Rate::simple(p("4980"), 60, 60, d("0.10")),
        fee,
    ]
}

fn card(prefix: &str) -> RateCard {
    let tariff = billing::CompiledTariff::new(billing::TariffVersion {
        tariff_id: Uuid::from_u128(0x7a1),
        version: 1,
        effective_from: at("2024-03-01T00:00:00Z"),
        currency: "EUR".into(),
        rates: rates(),
        offpeak_window: None,
        crossing: Crossing::WholeCall,
        posting: Posting::default(),
    });
    RateCard::for_destination(&tariff, prefix).unwrap()
}

async fn rows(pool: &PgPool, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
    let mut out = String::new();
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// Catch up with everything committed so far (past a fence that other tests' transactions in
/// the same cluster may hold for a moment).
async fn catch_up(store: &EventStore) {
    let deadline = std::time::Duration::from_secs(30);
    Runner::new(store.clone(), Billing)
        .catch_up_to_now(deadline)
        .await
        .unwrap();
    Runner::new(store.clone(), Invoices)
        .catch_up_to_now(deadline)
        .await
        .unwrap();
}

const WHOLE: Uuid = Uuid::from_u128(0xa1);
const SPLIT: Uuid = Uuid::from_u128(0xa2);
const FIVE: Uuid = Uuid::from_u128(0xa3);
const TEN: Uuid = Uuid::from_u128(0xa4);
const ONE: Uuid = Uuid::from_u128(0xa5);

/// The scripted month: every reference case that involves calls, then settlement, invoicing,
/// a period close and a correction after it.
async fn scripted(db: &TestDb) -> EventStore {
    let store = EventStore::new(db.pool.clone());
    let mut world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-03-01T00:00:00Z"),
    };
    world
        .tariff(TENANT, Uuid::from_u128(0x7a1), Crossing::WholeCall, rates())
        .await;
    world
        .tariff(TENANT, Uuid::from_u128(0x7a2), Crossing::Split, rates())
        .await;
    let postpaid = AccountKind::Postpaid { credit_limit: d("100") };
    world
        .open_account(TENANT, WHOLE, postpaid, Uuid::from_u128(0x7a1), "20.00")
        .await;
    world
        .open_account(TENANT, SPLIT, postpaid, Uuid::from_u128(0x7a2), "0")
        .await;
    world
        .open_account(TENANT, FIVE, AccountKind::Prepaid, Uuid::from_u128(0x7a1), "5.00")
        .await;
    world
        .open_account(TENANT, TEN, AccountKind::Prepaid, Uuid::from_u128(0x7a1), "10.00")
        .await;
    world
        .open_account(TENANT, ONE, AccountKind::Prepaid, Uuid::from_u128(0x7a1), "1.00")
        .await;
    // Another tenant's account with the same tariff id: it must never show up in TENANT's rows.
    world
        .tariff(OTHER_TENANT, Uuid::from_u128(0x7a1), Crossing::WholeCall, rates())
        .await;

    // Case 4: 0.02/min 30/6: 31 s -> 36 s, 0.012; 29 s -> 30 s, 0.010.
    world
        .answered_call(4_1, WHOLE, "+49301234", at("2024-03-04T10:00:00Z"), 31, None)
        .await;
    world
        .answered_call(4_2, WHOLE, "+49301234", at("2024-03-04T10:05:00Z"), 29, None)
        .await;
    // Case 5: grace 5 s: 5 s is free, 6 s is billed normally.
    world
        .answered_call(5_1, WHOLE, "+49401234", at("2024-03-04T11:00:00Z"), 5, None)
        .await;
    world
        .answered_call(5_2, WHOLE, "+49401234", at("2024-03-04T11:05:00Z"), 6, None)
        .await;
    // Case 6: 0.06/min 1/1, 180 s -> 0.18; 0.05/min 60/60, 600 s -> 0.50.
    world
        .answered_call(6_1, WHOLE, "+49501234", at("2024-03-04T12:00:00Z"), 180, None)
        .await;
    world
        .answered_call(6_2, WHOLE, "+49601234", at("2024-03-04T12:30:00Z"), 600, None)
        .await;
    // Case 7: answered 18:50 Berlin (17:50 UTC in March), 20 min: whole_call 2.00, split 1.40.
    let answered = at("2024-03-05T17:50:00Z") - TimeDelta::seconds(5);
    world.answered_call(7_1, WHOLE, "+49701234", answered, 1200, None).await;
    world.answered_call(7_2, SPLIT, "+49701234", answered, 1200, None).await;
    // Cases 2 and 3: the reservation's maximum duration (50 min; 98 min with a 0.20 fee).
    world
        .answered_call(
            2_1,
            FIVE,
            "+49801234",
            at("2024-03-06T09:00:00Z"),
            60,
            Some((&card("+49801234"), None)),
        )
        .await;
    world
        .answered_call(
            3_1,
            TEN,
            "+49901234",
            at("2024-03-06T09:00:00Z"),
            60,
            Some((&card("+49901234"), None)),
        )
        .await;
    // Case 8: two concurrent calls on 1.00 at 0.10/min: the first capped at 6 min reserves 0.60,
    // the second is authorized for what remains (0.40, 4 min); the charges sum to at most 1.00.
    world
        .answered_call(
            8_1,
            ONE,
            "+49801234",
            at("2024-03-07T09:00:00Z"),
            300,
            Some((&card("+49801234"), Some(360))),
        )
        .await;
    world
        .answered_call(
            8_2,
            ONE,
            "+49801234",
            at("2024-03-07T09:01:00Z"),
            240,
            Some((&card("+49801234"), None)),
        )
        .await;

    // Settle every rated charge on its account and put it on the invoice, as the billing
    // process does once the projection has rated a call.
    catch_up(&store).await;
    type RatedCharge = (Uuid, Uuid, Decimal, Option<String>, DateTime<Utc>);
    let charges: Vec<RatedCharge> = sqlx::query_as(
        "SELECT c.account_id, c.call_id, c.amount, c.matched_prefix, c.answered_at FROM rm_charges c \
         WHERE c.status = 'rated' ORDER BY c.answered_at, c.call_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (account, call, amount, prefix, answered_at) in charges {
        let reservation: Option<Uuid> =
            sqlx::query_scalar("SELECT reservation_id FROM rm_reservations WHERE call_id = $1 AND status = 'open'")
                .bind(call)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        world
            .account(
                TENANT,
                account,
                AccountCommand::Settle {
                    charge_id: call,
                    call_id: call,
                    reservation_id: reservation,
                    amount,
                    currency: "EUR".into(),
                },
            )
            .await;
        world
            .invoice(
                TENANT,
                account,
                InvoiceCommand::RecordCharge {
                    charge_id: call,
                    occurred_at: answered_at,
                    service: Service::Calls,
                    destination: prefix.unwrap_or_default(),
                    amount,
                },
            )
            .await;
    }
    // April: March closes with 19 % VAT added; then a late correction of a March charge
    // lands in April as an adjustment, and March "as corrected" differs from "as billed".
    world.now = at("2024-04-02T08:00:00Z");
    world
        .invoice(
            TENANT,
            WHOLE,
            InvoiceCommand::ClosePeriod {
                period: BillingPeriod { year: 2024, month: 3 },
                now: world.now,
                tax: TaxPolicy {
                    rate_pct: d("19"),
                    mode: TaxMode::Exclusive,
                },
            },
        )
        .await;
    // The correction itself: tariff 0x7a1 v1 should have priced 4960 at 0.04/min. The
    // projection re-rates every charge billed with v1 beside its billed amount; finance posts
    // the one difference (`ledgerline tariff correct` does this step by step).
    let mut corrected = rates();
    corrected[3] = Rate::simple(Prefix::parse("4960").unwrap(), 60, 60, d("0.04"));
    let correct = TariffCommand::CorrectVersion {
        version: 1,
        rates: corrected,
        offpeak_window: Some(
            OffPeakWindow::new(
                NaiveTime::from_hms_opt(19, 0, 0).unwrap(),
                NaiveTime::from_hms_opt(7, 0, 0).unwrap(),
            )
            .unwrap(),
        ),
        crossing: Crossing::WholeCall,
        posting: Posting::default(),
        reason: "4960 at 0.04/min".into(),
    };
    world
        .handler
        .execute::<Tariff, _>(
            &ctx(world.now),
            StreamRef::of::<Tariff>(TENANT, &Uuid::from_u128(0x7a1)),
            |s: &TariffState| billing::tariff::decide(&correct, s),
        )
        .await
        .unwrap();
    world
        .invoice(
            TENANT,
            WHOLE,
            InvoiceCommand::CorrectCharge {
                correction_id: Uuid::from_u128(0xc0),
                charge_id: Uuid::from_u128(0xca11_0000 + 6_2),
                corrected_amount: d("0.40"),
                reason: "tariff correction: 4960 at 0.04/min".into(),
            },
        )
        .await;
    world
        .account(
            TENANT,
            WHOLE,
            AccountCommand::Adjust {
                adjustment_id: Uuid::from_u128(0xc0),
                amount: d("0.10"),
                reason: "tariff correction: 4960 at 0.04/min".into(),
            },
        )
        .await;
    catch_up(&store).await;
    store
}

#[tokio::test]
async fn scripted_calls_project_to_these_cdrs_charges_balances_and_invoices() {
    let db = TestDb::new().await.unwrap();
    scripted(&db).await;
    let pool = &db.pool;

    let cdrs = rows(
        pool,
        "SELECT concat_ws(' | ', right(call_id::text, 4), direction, caller, caller_name, callee, \
         to_char(started_at AT TIME ZONE 'UTC', 'MM-DD HH24:MI:SS'), to_char(ring_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), \
         to_char(answer_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), to_char(end_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), \
         duration_s, billed_s, end_reason, hangup_by, sip_status, charge, currency) \
         FROM rm_cdrs WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY started_at, call_id",
    )
    .await;
    expect![[r#"
        0029 | outbound | 1001 | Alice | +49301234 | 03-04 10:00:00 | 10:00:02 | 10:00:05 | 10:00:36 | 31 | 36 | normal_clearing | caller | 200 | 0.01200 | EUR
        002a | outbound | 1001 | Alice | +49301234 | 03-04 10:05:00 | 10:05:02 | 10:05:05 | 10:05:34 | 29 | 30 | normal_clearing | caller | 200 | 0.01000 | EUR
        0033 | outbound | 1001 | Alice | +49401234 | 03-04 11:00:00 | 11:00:02 | 11:00:05 | 11:00:10 | 5 | 0 | normal_clearing | caller | 200 | 0 | EUR
        0034 | outbound | 1001 | Alice | +49401234 | 03-04 11:05:00 | 11:05:02 | 11:05:05 | 11:05:11 | 6 | 30 | normal_clearing | caller | 200 | 0.01000 | EUR
        003d | outbound | 1001 | Alice | +49501234 | 03-04 12:00:00 | 12:00:02 | 12:00:05 | 12:03:05 | 180 | 180 | normal_clearing | caller | 200 | 0.18000 | EUR
        003e | outbound | 1001 | Alice | +49601234 | 03-04 12:30:00 | 12:30:02 | 12:30:05 | 12:40:05 | 600 | 600 | normal_clearing | caller | 200 | 0.50000 | EUR
        0047 | outbound | 1001 | Alice | +49701234 | 03-05 17:49:55 | 17:49:57 | 17:50:00 | 18:10:00 | 1200 | 1200 | normal_clearing | caller | 200 | 2.00000 | EUR
        0048 | outbound | 1001 | Alice | +49701234 | 03-05 17:49:55 | 17:49:57 | 17:50:00 | 18:10:00 | 1200 | 1200 | normal_clearing | caller | 200 | 1.40000 | EUR
        0015 | outbound | 1001 | Alice | +49801234 | 03-06 09:00:00 | 09:00:02 | 09:00:05 | 09:01:05 | 60 | 60 | normal_clearing | caller | 200 | 0.10000 | EUR
        001f | outbound | 1001 | Alice | +49901234 | 03-06 09:00:00 | 09:00:02 | 09:00:05 | 09:01:05 | 60 | 60 | normal_clearing | caller | 200 | 0.30000 | EUR
        0051 | outbound | 1001 | Alice | +49801234 | 03-07 09:00:00 | 09:00:02 | 09:00:05 | 09:05:05 | 300 | 300 | normal_clearing | caller | 200 | 0.50000 | EUR
        0052 | outbound | 1001 | Alice | +49801234 | 03-07 09:01:00 | 09:01:02 | 09:01:05 | 09:05:05 | 240 | 240 | normal_clearing | caller | 200 | 0.40000 | EUR
    "#]]
    .assert_eq(&cdrs);

    let charges = rows(
        pool,
        "SELECT concat_ws(' | ', right(call_id::text, 4), right(account_id::text, 2), destination, status, \
         matched_prefix, 'v' || tariff_version, duration_s, billed_s, amount, amount_exact, explanation) \
         FROM rm_charges WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY answered_at, call_id",
    )
    .await;
    expect![[r#"
        0029 | a1 | +49301234 | rated | 4930 | v1 | 31 | 36 | 0.01200 | 0.0120 | prefix 4930 tariff v1; 31 s, billed 36 s; first 30 s @ 0.02/min = 0.01; 1 x 6 s from 30 s @ 0.02/min = 0.002; exact 0.012 posted 0.01200 (5 dp half-up)
        002a | a1 | +49301234 | rated | 4930 | v1 | 29 | 30 | 0.01000 | 0.01 | prefix 4930 tariff v1; 29 s, billed 30 s; first 30 s @ 0.02/min = 0.01; exact 0.01 posted 0.01000 (5 dp half-up)
        0033 | a1 | +49401234 | rated | 4940 | v1 | 5 | 0 | 0 | 0 | prefix 4940 tariff v1; 5 s <= grace 5 s: free; exact 0 posted 0.00000 (5 dp half-up)
        0034 | a1 | +49401234 | rated | 4940 | v1 | 6 | 30 | 0.01000 | 0.01 | prefix 4940 tariff v1; 6 s, billed 30 s; first 30 s @ 0.02/min = 0.01; exact 0.01 posted 0.01000 (5 dp half-up)
        003d | a1 | +49501234 | rated | 4950 | v1 | 180 | 180 | 0.18000 | 0.18 | prefix 4950 tariff v1; 180 s, billed 180 s; first 1 s @ 0.06/min = 0.001; 179 x 1 s from 1 s @ 0.06/min = 0.179; exact 0.18 posted 0.18000 (5 dp half-up)
        003e | a1 | +49601234 | rated | 4960 | v1 | 600 | 600 | 0.50000 | 0.50 | prefix 4960 tariff v1; 600 s, billed 600 s; first 60 s @ 0.05/min = 0.05; 9 x 60 s from 60 s @ 0.05/min = 0.45; exact 0.5 posted 0.50000 (5 dp half-up)
        0047 | a1 | +49701234 | rated | 4970 | v1 | 1200 | 1200 | 2.00000 | 2.00 | prefix 4970 tariff v1; 1200 s, billed 1200 s; first 60 s peak @ 0.10/min = 0.1; 19 x 60 s from 60 s peak @ 0.10/min = 1.9; exact 2 posted 2.00000 (5 dp half-up)
        0048 | a2 | +49701234 | rated | 4970 | v1 | 1200 | 1200 | 1.40000 | 1.40 | prefix 4970 tariff v1; 1200 s, billed 1200 s (split); first 60 s peak @ 0.10/min = 0.1; 9 x 60 s from 60 s peak @ 0.10/min = 0.9; 10 x 60 s from 600 s off-peak @ 0.04/min = 0.4; exact 1.4 posted 1.40000 (5 dp half-up)
        0015 | a3 | +49801234 | rated | 4980 | v1 | 60 | 60 | 0.10000 | 0.10 | prefix 4980 tariff v1; 60 s, billed 60 s; first 60 s @ 0.10/min = 0.1; exact 0.1 posted 0.10000 (5 dp half-up)
        001f | a4 | +49901234 | rated | 4990 | v1 | 60 | 60 | 0.30000 | 0.30 | prefix 4990 tariff v1; 60 s, billed 60 s; first 60 s @ 0.10/min = 0.1; fee 0.20; exact 0.3 posted 0.30000 (5 dp half-up)
        0051 | a5 | +49801234 | rated | 4980 | v1 | 300 | 300 | 0.50000 | 0.50 | prefix 4980 tariff v1; 300 s, billed 300 s; first 60 s @ 0.10/min = 0.1; 4 x 60 s from 60 s @ 0.10/min = 0.4; exact 0.5 posted 0.50000 (5 dp half-up)
        0052 | a5 | +49801234 | rated | 4980 | v1 | 240 | 240 | 0.40000 | 0.40 | prefix 4980 tariff v1; 240 s, billed 240 s; first 60 s @ 0.10/min = 0.1; 3 x 60 s from 60 s @ 0.10/min = 0.3; exact 0.4 posted 0.40000 (5 dp half-up)
    "#]]
    .assert_eq(&charges);

    let balances = rows(
        pool,
        "SELECT concat_ws(' | ', right(account_id::text, 2), kind, credit_limit, payments, adjustments, \
         settled_charges, open_reservations, balance, available) \
         FROM rm_balances_view WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY account_id",
    )
    .await;
    expect![[r#"
        a1 | postpaid | 100 | 20.00 | 0.10 | 2.71200 | 0 | 17.38800 | 117.38800
        a2 | postpaid | 100 | 0 | 0 | 1.40000 | 0 | -1.40000 | 98.60000
        a3 | prepaid | 0 | 5.00 | 0 | 0.10000 | 0 | 4.90000 | 4.90000
        a4 | prepaid | 0 | 10.00 | 0 | 0.30000 | 0 | 9.70000 | 9.70000
        a5 | prepaid | 0 | 1.00 | 0 | 0.90000 | 0 | 0.10000 | 0.10000
    "#]]
    .assert_eq(&balances);

    let reservations = rows(
        pool,
        "SELECT concat_ws(' | ', right(account_id::text, 2), right(call_id::text, 4), amount, max_duration_s, status, \
         settled_amount) FROM rm_reservations ORDER BY reserved_at, call_id",
    )
    .await;
    expect![[r#"
        a3 | 0015 | 5.00000 | 3000 | settled | 0.10000
        a4 | 001f | 10.00000 | 5880 | settled | 0.30000
        a5 | 0051 | 0.60000 | 360 | settled | 0.50000
        a5 | 0052 | 0.40000 | 240 | settled | 0.40000
    "#]]
    .assert_eq(&reservations);

    let invoices = rows(
        pool,
        "SELECT concat_ws(E'\\n', '== ' || right(account_id::text, 2) || ' ' || period || ' ' || status, \
         '-- as billed', document, '-- as corrected', corrected_document) \
         FROM rm_invoices WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' AND account_id = '00000000-0000-0000-0000-0000000000a1' \
         ORDER BY account_id, period",
    )
    .await;
    expect![[r#"
        == a1 2024-03 closed
        -- as billed
        Invoice 2024-03 for account 00000000-0000-0000-0000-0000000000a1 (EUR, closed)
        service      destination    kind                    count         amount
        calls        4930           charges                     2        0.02200
        calls        4940           charges                     2        0.01000
        calls        4950           charges                     1        0.18000
        calls        4960           charges                     1        0.50000
        calls        4970           charges                     1        2.00000
        net             2.71
        tax             0.51  (19% added)
        total           3.22

        -- as corrected
        Invoice 2024-03 for account 00000000-0000-0000-0000-0000000000a1 (EUR, closed)
        service      destination    kind                    count         amount
        calls        4930           charges                     2        0.02200
        calls        4940           charges                     2        0.01000
        calls        4950           charges                     1        0.18000
        calls        4960           charges                     1        0.50000
        calls        4960           adjustments 2024-03         1       -0.10000
        calls        4970           charges                     1        2.00000
        net             2.61
        tax             0.50  (19% added)
        total           3.11

        == a1 2024-04 draft
        -- as billed
        Invoice 2024-04 for account 00000000-0000-0000-0000-0000000000a1 (EUR, draft)
        service      destination    kind                    count         amount
        calls        4960           adjustments 2024-03         1       -0.10000
        net            -0.10
        tax             0.00  (0% added)
        total          -0.10

        -- as corrected
        Invoice 2024-04 for account 00000000-0000-0000-0000-0000000000a1 (EUR, draft)
        service      destination    kind                    count         amount
        net             0.00
        tax             0.00  (0% added)
        total           0.00

    "#]]
    .assert_eq(&invoices);

    let reports = rows(
        pool,
        "SELECT concat_ws(' | ', day, direction, right(trunk_id::text, 4), currency, calls, answered, asr_pct, acd_s, \
         duration_s, billed_s, cost) FROM rm_report_daily \
         WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY day, direction, trunk_id, currency",
    )
    .await;
    expect![[r#"
        2024-03-04 | outbound | 7247 | EUR | 6 | 6 | 100.00 | 141.8 | 851 | 876 | 0.71200
        2024-03-05 | outbound | 7247 | EUR | 2 | 2 | 100.00 | 1200.0 | 2400 | 2400 | 3.40000
        2024-03-06 | outbound | 7247 | EUR | 2 | 2 | 100.00 | 60.0 | 120 | 120 | 0.40000
        2024-03-07 | outbound | 7247 | EUR | 2 | 2 | 100.00 | 270.0 | 540 | 540 | 0.90000
    "#]]
    .assert_eq(&reports);
    let destinations = rows(
        pool,
        "SELECT concat_ws(' | ', day, destination, calls, duration_s, cost) FROM rm_report_destinations \
         WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY day, cost DESC, destination",
    )
    .await;
    expect![[r#"
        2024-03-04 | 4960 | 1 | 600 | 0.50000
        2024-03-04 | 4950 | 1 | 180 | 0.18000
        2024-03-04 | 4930 | 2 | 60 | 0.02200
        2024-03-04 | 4940 | 2 | 11 | 0.01000
        2024-03-05 | 4970 | 2 | 2400 | 3.40000
        2024-03-06 | 4990 | 1 | 60 | 0.30000
        2024-03-06 | 4980 | 1 | 60 | 0.10000
        2024-03-07 | 4980 | 2 | 540 | 0.90000
    "#]]
    .assert_eq(&destinations);
    let peak = rows(
        pool,
        "SELECT concat_ws(' | ', day, peak_concurrent_calls) FROM rm_report_peak_concurrency \
         WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY day",
    )
    .await;
    expect![[r#"
        2024-03-04 | 1
        2024-03-05 | 2
        2024-03-06 | 2
        2024-03-07 | 2
    "#]]
    .assert_eq(&peak);

    let other: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM rm_charges WHERE tenant_id = $1) + (SELECT count(*) FROM rm_cdrs WHERE tenant_id = $1)",
    )
    .bind(OTHER_TENANT)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(other, 0, "a tenant's tariff id never rates another tenant's calls");
}

#[tokio::test]
async fn a_tariff_correction_rerates_the_charges_of_its_version_beside_their_billed_amounts() {
    let db = TestDb::new().await.unwrap();
    let store = scripted(&db).await;
    // A March call reported only after the correction is billed with the corrected deck.
    let world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-04-02T09:00:00Z"),
    };
    world
        .answered_call(9_1, WHOLE, "+49601234", at("2024-03-08T10:00:00Z"), 600, None)
        .await;
    catch_up(&store).await;
    let charges = rows(
        &db.pool,
        "SELECT concat_ws(' | ', right(call_id::text, 4), 'v' || tariff_version || 'r' || tariff_revision, amount, \
         coalesce('r' || corrected_revision, 'not corrected'), corrected_amount, corrected_explanation) \
         FROM rm_charges WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY answered_at, call_id",
    )
    .await;
    // Only the 4960 call changes amount; every charge of v1 is re-rated (the split tariff's is
    // not); the late call is billed at revision 1 and needs no correction.
    expect![[r#"
        0029 | v1r0 | 0.01200 | r1 | 0.01200 | correction 1: prefix 4930 tariff v1; 31 s, billed 36 s; first 30 s @ 0.02/min = 0.01; 1 x 6 s from 30 s @ 0.02/min = 0.002; exact 0.012 posted 0.01200 (5 dp half-up)
        002a | v1r0 | 0.01000 | r1 | 0.01000 | correction 1: prefix 4930 tariff v1; 29 s, billed 30 s; first 30 s @ 0.02/min = 0.01; exact 0.01 posted 0.01000 (5 dp half-up)
        0033 | v1r0 | 0 | r1 | 0 | correction 1: prefix 4940 tariff v1; 5 s <= grace 5 s: free; exact 0 posted 0.00000 (5 dp half-up)
        0034 | v1r0 | 0.01000 | r1 | 0.01000 | correction 1: prefix 4940 tariff v1; 6 s, billed 30 s; first 30 s @ 0.02/min = 0.01; exact 0.01 posted 0.01000 (5 dp half-up)
        003d | v1r0 | 0.18000 | r1 | 0.18000 | correction 1: prefix 4950 tariff v1; 180 s, billed 180 s; first 1 s @ 0.06/min = 0.001; 179 x 1 s from 1 s @ 0.06/min = 0.179; exact 0.18 posted 0.18000 (5 dp half-up)
        003e | v1r0 | 0.50000 | r1 | 0.40000 | correction 1: prefix 4960 tariff v1; 600 s, billed 600 s; first 60 s @ 0.04/min = 0.04; 9 x 60 s from 60 s @ 0.04/min = 0.36; exact 0.4 posted 0.40000 (5 dp half-up)
        0047 | v1r0 | 2.00000 | r1 | 2.00000 | correction 1: prefix 4970 tariff v1; 1200 s, billed 1200 s; first 60 s peak @ 0.10/min = 0.1; 19 x 60 s from 60 s peak @ 0.10/min = 1.9; exact 2 posted 2.00000 (5 dp half-up)
        0048 | v1r0 | 1.40000 | not corrected
        0015 | v1r0 | 0.10000 | r1 | 0.10000 | correction 1: prefix 4980 tariff v1; 60 s, billed 60 s; first 60 s @ 0.10/min = 0.1; exact 0.1 posted 0.10000 (5 dp half-up)
        001f | v1r0 | 0.30000 | r1 | 0.30000 | correction 1: prefix 4990 tariff v1; 60 s, billed 60 s; first 60 s @ 0.10/min = 0.1; fee 0.20; exact 0.3 posted 0.30000 (5 dp half-up)
        0051 | v1r0 | 0.50000 | r1 | 0.50000 | correction 1: prefix 4980 tariff v1; 300 s, billed 300 s; first 60 s @ 0.10/min = 0.1; 4 x 60 s from 60 s @ 0.10/min = 0.4; exact 0.5 posted 0.50000 (5 dp half-up)
        0052 | v1r0 | 0.40000 | r1 | 0.40000 | correction 1: prefix 4980 tariff v1; 240 s, billed 240 s; first 60 s @ 0.10/min = 0.1; 3 x 60 s from 60 s @ 0.10/min = 0.3; exact 0.4 posted 0.40000 (5 dp half-up)
        005b | v1r1 | 0.40000 | not corrected
    "#]]
    .assert_eq(&charges);
    let tariffs = rows(
        &db.pool,
        "SELECT concat_ws(' | ', right(tariff_id::text, 3), version, revision, \
         body->'rates'->3->>'prefix', body->'rates'->3->>'first_price_per_minute') \
         FROM rm_rating_tariff_versions WHERE tenant_id = '00000000-0000-0000-0000-00000000007e' ORDER BY tariff_id",
    )
    .await;
    expect![[r#"
        7a1 | 1 | 1 | 4960 | 0.04
        7a2 | 1 | 0 | 4960 | 0.05
    "#]]
    .assert_eq(&tariffs);
}

/// Reference case 1: 0.03/min, 60/60, no fee; a room owned by account C; the host stays
/// 30 min, guest 1 25 min, guest 2 20 min: three charges to C, 0.90, 0.75 and 0.60 (2.25).
#[tokio::test]
async fn conference_legs_are_charged_to_the_room_owner_reference_case_1() {
    use domain::conference::{
        self, ConferenceCommand, ConferenceRoom, Role, RoomSettings, RoomState, SessionEndReason,
    };
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-03-01T00:00:00Z"),
    };
    let tariff = Uuid::from_u128(0x7a3);
    let access = Rate::simple(Prefix::parse("4930123459").unwrap(), 60, 60, d("0.03"));
    world.tariff(TENANT, tariff, Crossing::WholeCall, vec![access]).await;
    let owner = Uuid::from_u128(0xc1);
    world
        .open_account(
            TENANT,
            owner,
            AccountKind::Postpaid { credit_limit: d("100") },
            tariff,
            "0",
        )
        .await;
    let room = Uuid::from_u128(0x200);
    let start = at("2024-03-04T10:00:00Z");
    let m = |minutes: i64| start + TimeDelta::minutes(minutes);
    let (host, guest1, guest2) = (
        Uuid::from_u128(0x1e91),
        Uuid::from_u128(0x1e92),
        Uuid::from_u128(0x1e93),
    );
    let join = |leg: Uuid, role: Role| ConferenceCommand::Join {
        leg_id: leg,
        call_id: Uuid::from_u128(leg.as_u128() + 0xca11_0000),
        role,
        at: m(0),
    };
    let commands = vec![
        ConferenceCommand::Create {
            room_id: room,
            tenant_id: TENANT,
            settings: RoomSettings {
                name: "Board".into(),
                owner_account_id: owner,
                host_code: "1234".into(),
                guest_code: "5678".into(),
                moderated: true,
                max_participants: 5,
                record: false,
                access_number: Some("+4930123459".into()),
            },
            at: m(-60),
        },
        ConferenceCommand::StartSession {
            session_id: Uuid::from_u128(0x5e55),
            node_id: "media-1".into(),
            at: m(0),
        },
        join(host, Role::Host),
        join(guest1, Role::Guest),
        join(guest2, Role::Guest),
        ConferenceCommand::Leave {
            leg_id: guest2,
            at: m(20),
        },
        ConferenceCommand::Leave {
            leg_id: guest1,
            at: m(25),
        },
        ConferenceCommand::Leave {
            leg_id: host,
            at: m(30),
        },
        ConferenceCommand::EndSession {
            reason: SessionEndReason::LastHostLeft,
            at: m(30),
        },
    ];
    for command in commands {
        world
            .handler
            .execute::<ConferenceRoom, _>(
                &ctx(world.now),
                StreamRef::of::<ConferenceRoom>(TENANT, &room),
                |s: &RoomState| conference::decide(&command, s),
            )
            .await
            .unwrap();
    }
    catch_up(&store).await;
    let charges = rows(
        &db.pool,
        "SELECT concat_ws(' | ', service, right(call_id::text, 4), right(leg_id::text, 4), right(account_id::text, 2), \
         destination, duration_s, billed_s, amount, explanation) FROM rm_charges ORDER BY amount DESC",
    )
    .await;
    expect![[r#"
        conferences | 1e91 | 1e91 | c1 | +4930123459 | 1800 | 1800 | 0.90000 | conference room 00000000-0000-0000-0000-000000000200, paid by the owner: prefix 4930123459 tariff v1; 1800 s, billed 1800 s; first 60 s @ 0.03/min = 0.03; 29 x 60 s from 60 s @ 0.03/min = 0.87; exact 0.9 posted 0.90000 (5 dp half-up)
        conferences | 1e92 | 1e92 | c1 | +4930123459 | 1500 | 1500 | 0.75000 | conference room 00000000-0000-0000-0000-000000000200, paid by the owner: prefix 4930123459 tariff v1; 1500 s, billed 1500 s; first 60 s @ 0.03/min = 0.03; 24 x 60 s from 60 s @ 0.03/min = 0.72; exact 0.75 posted 0.75000 (5 dp half-up)
        conferences | 1e93 | 1e93 | c1 | +4930123459 | 1200 | 1200 | 0.60000 | conference room 00000000-0000-0000-0000-000000000200, paid by the owner: prefix 4930123459 tariff v1; 1200 s, billed 1200 s; first 60 s @ 0.03/min = 0.03; 19 x 60 s from 60 s @ 0.03/min = 0.57; exact 0.6 posted 0.60000 (5 dp half-up)
    "#]]
    .assert_eq(&charges);
    let total: Decimal = sqlx::query_scalar("SELECT sum(amount) FROM rm_charges WHERE service = 'conferences'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, d("2.25"));
    // The reports count each participant leg, under direction `conference`, at the owner's cost.
    let reports = rows(
        &db.pool,
        "SELECT concat_ws(' | ', direction, trunk_id = '00000000-0000-0000-0000-000000000000', currency, calls, \
         answered, duration_s, billed_s, cost, asr_pct, acd_s) FROM rm_report_daily ORDER BY direction",
    )
    .await;
    expect![[r#"
        conference | t | EUR | 3 | 3 | 4500 | 4500 | 2.25000 | 100.00 | 1500.0
    "#]]
    .assert_eq(&reports);
    let destinations = rows(
        &db.pool,
        "SELECT concat_ws(' | ', destination, currency, calls, duration_s, cost) FROM rm_report_destinations",
    )
    .await;
    expect![[r#"
        4930123459 | EUR | 3 | 4500 | 2.25000
    "#]]
    .assert_eq(&destinations);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_rating_conference_stays")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(open, 0, "an ended session keeps no stays");

    // Rebuilt one event at a time, the session's stays cross every batch: same rows.
    rebuild::create_schema(&db.pool, "shadow_one", projections::billing::TABLES)
        .await
        .unwrap();
    Runner::new(store.clone(), Billing)
        .in_schema("shadow_one")
        .batch_size(1)
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    for table in projections::billing::TABLES {
        let diff = rebuild::diff(&db.pool, "shadow_one", table, 10).await.unwrap();
        assert!(diff.is_empty(), "{table}: {diff:?}");
    }
}

#[tokio::test]
async fn media_counters_of_call_ended_land_on_the_cdr_legs() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-03-01T00:00:00Z"),
    };
    let call = Uuid::from_u128(0x3ed1a);
    let (answered, unanswered) = (Uuid::from_u128(0x1e91), Uuid::from_u128(0x1e92));
    let start = at("2024-03-04T10:00:00Z");
    world.internal_call(call, start).await;
    let mut commands = vec![CallCommand::Authorize {
        max_duration_s: None,
        reservation_id: None,
        at: start,
    }];
    for leg in [answered, unanswered] {
        commands.push(CallCommand::CreateLeg {
            leg_id: leg,
            target: "sip:1002@acme".into(),
            trunk_id: None,
            at: start,
        });
    }
    commands.push(CallCommand::Answer {
        leg_id: answered,
        at: start,
    });
    commands.push(CallCommand::End {
        hangup_by: Party::Caller,
        sip_status: 200,
        reason: None,
        at: start + TimeDelta::seconds(30),
        media: vec![
            domain::call::LegMedia {
                leg_id: answered,
                codec: "PCMA".into(),
                packets_received: 1490,
                packets_sent: 1500,
                bytes_received: 256_280,
                bytes_sent: 258_000,
                packets_lost: 10,
                jitter_us: 2_350,
            },
            domain::call::LegMedia {
                leg_id: Uuid::from_u128(0xca11e5),
                codec: "PCMU".into(),
                packets_received: 1500,
                packets_sent: 1490,
                bytes_received: 240_000,
                bytes_sent: 238_400,
                packets_lost: 0,
                jitter_us: 800,
            },
        ],
    });
    for command in commands {
        world.call(TENANT, call, command).await;
    }
    catch_up(&store).await;
    let legs = rows(
        &db.pool,
        "SELECT concat_ws(' | ', right(l.leg_id::text, 4), l.kind, l.target, coalesce(l.codec, 'no media report'), l.packets_received, \
         l.packets_sent, l.bytes_received, l.bytes_sent, l.packets_lost, l.jitter_us, q.packet_loss_pct, q.jitter_ms) \
         FROM rm_cdr_legs l LEFT JOIN rm_cdr_leg_quality q USING (tenant_id, call_id, leg_id) ORDER BY l.leg_id",
    )
    .await;
    expect![[r#"
        1e91 | call | sip:1002@acme | PCMA | 1490 | 1500 | 256280 | 258000 | 10 | 2350 | 0.67 | 2.4
        1e92 | call | sip:1002@acme | no media report
        11e5 | caller | 1001 | PCMU | 1500 | 1490 | 240000 | 238400 | 0 | 800 | 0.00 | 0.8
    "#]]
    .assert_eq(&legs);
}

#[tokio::test]
async fn a_rebuild_in_small_batches_equals_the_live_read_model_row_for_row() {
    let db = TestDb::new().await.unwrap();
    let store = scripted(&db).await;
    for (schema, tables) in [
        ("shadow_billing", projections::billing::TABLES),
        ("shadow_invoices", projections::invoices::TABLES),
    ] {
        rebuild::create_schema(&db.pool, schema, tables).await.unwrap();
    }
    // Batches of 3 cut every call across batches: the rows must not depend on where.
    Runner::new(store.clone(), Billing)
        .in_schema("shadow_billing")
        .batch_size(3)
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    Runner::new(store.clone(), Invoices)
        .in_schema("shadow_invoices")
        .batch_size(2)
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    for (schema, tables) in [
        ("shadow_billing", projections::billing::TABLES),
        ("shadow_invoices", projections::invoices::TABLES),
    ] {
        for table in tables {
            let diff = rebuild::diff(&db.pool, schema, table, 10).await.unwrap();
            assert!(diff.is_empty(), "{table}: {diff:?}");
            assert_eq!(
                rebuild::checksum(&db.pool, schema, table).await.unwrap().md5,
                rebuild::checksum(&db.pool, "public", table).await.unwrap().md5
            );
        }
    }
    // One altered row is found, on both sides.
    sqlx::query("UPDATE rm_charges SET amount = amount + 0.00001 WHERE call_id = $1")
        .bind(Uuid::from_u128(0xca11_0000 + 6_1))
        .execute(&db.pool)
        .await
        .unwrap();
    let diff = rebuild::diff(&db.pool, "shadow_billing", "rm_charges", 10)
        .await
        .unwrap();
    assert_eq!(diff.len(), 2, "{diff:?}");
    let live = diff.iter().find(|d| d.side == "live").expect("the altered live row");
    let rebuilt = diff.iter().find(|d| d.side == "rebuild").expect("the rebuilt row");
    assert!(
        live.row.contains("0.18001") && rebuilt.row.contains("0.18000"),
        "{diff:?}"
    );
}

#[tokio::test]
async fn time_travel_gives_the_balance_between_two_payments() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-03-01T00:00:00Z"),
    };
    world
        .tariff(TENANT, Uuid::from_u128(0x7a1), Crossing::WholeCall, rates())
        .await;
    world
        .open_account(TENANT, FIVE, AccountKind::Prepaid, Uuid::from_u128(0x7a1), "5.00")
        .await;
    let between: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    world
        .account(
            TENANT,
            FIVE,
            AccountCommand::TopUp {
                payment_id: Uuid::new_v4(),
                amount: d("7.50"),
            },
        )
        .await;
    catch_up(&store).await;
    rebuild::create_schema(&db.pool, "as_of", projections::billing::TABLES)
        .await
        .unwrap();
    Runner::new(store.clone(), Billing)
        .in_schema("as_of")
        .until(Some(Until::RecordedAt(between)))
        .catch_up_to_now(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let then: Decimal = sqlx::query_scalar("SELECT balance FROM as_of.rm_balances WHERE account_id = $1")
        .bind(FIVE)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let now: Decimal = sqlx::query_scalar("SELECT balance FROM rm_balances WHERE account_id = $1")
        .bind(FIVE)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((then, now), (d("5.00"), d("12.50")));
}

#[tokio::test]
async fn live_calls_show_their_state_until_they_end() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-03-01T00:00:00Z"),
    };
    let call = Uuid::from_u128(0x11fe);
    let leg = Uuid::from_u128(0x11fe1e9);
    let start = at("2024-03-04T10:00:00Z");
    world.internal_call(call, start).await;
    let live = || async {
        catch_up(&store).await;
        rows(
            &db.pool,
            "SELECT concat_ws(' | ', state, caller, callee, direction, on_hold) FROM rm_live_calls ORDER BY call_id",
        )
        .await
    };
    assert_eq!(live().await, "initiated | 1001 | 1002 | internal | f\n");
    for command in [
        CallCommand::Authorize {
            max_duration_s: None,
            reservation_id: None,
            at: start,
        },
        CallCommand::CreateLeg {
            leg_id: leg,
            target: "sip:1002@acme".into(),
            trunk_id: None,
            at: start,
        },
        CallCommand::Answer { leg_id: leg, at: start },
        CallCommand::Hold {
            by: Party::Caller,
            at: start,
        },
    ] {
        world.call(TENANT, call, command).await;
    }
    assert_eq!(live().await, "on_hold | 1001 | 1002 | internal | t\n");
    world
        .call(
            TENANT,
            call,
            CallCommand::End {
                hangup_by: Party::Callee,
                sip_status: 200,
                reason: None,
                at: start + TimeDelta::seconds(42),
                media: vec![],
            },
        )
        .await;
    assert_eq!(live().await, "", "an ended call leaves the live view");
    let cdr = rows(
        &db.pool,
        "SELECT concat_ws(' | ', duration_s, holds, hangup_by, end_reason, coalesce(charge::text, 'no charge')) FROM rm_cdrs",
    )
    .await;
    assert_eq!(cdr, "42 | 1 | callee | normal_clearing | no charge\n");
}

#[tokio::test]
async fn a_call_answered_by_a_conference_is_not_charged_to_the_caller() {
    let db = TestDb::new().await.unwrap();
    let store = EventStore::new(db.pool.clone());
    let world = World {
        handler: CommandHandler::new(store.clone()),
        now: at("2024-03-01T00:00:00Z"),
    };
    world
        .tariff(TENANT, Uuid::from_u128(0x7a1), Crossing::WholeCall, rates())
        .await;
    let postpaid = AccountKind::Postpaid { credit_limit: d("100") };
    world
        .open_account(TENANT, WHOLE, postpaid, Uuid::from_u128(0x7a1), "0")
        .await;
    // The same number, once answered by a phone (charged) and once by the conference IVR at
    // that access number (not charged to the caller: the room owner pays per leg).
    let start = at("2024-03-04T10:00:00Z");
    let phone = world.answered_call(1, WHOLE, "4930700", start, 60, None).await;
    let conference = Uuid::from_u128(0xc0f_ca11);
    let leg = Uuid::from_u128(0xc0f_1e9);
    let s = |secs: i64| start + TimeDelta::seconds(secs);
    for command in [
        CallCommand::Initiate(CallInitiated {
            call_id: conference,
            tenant_id: TENANT,
            direction: Direction::Internal,
            caller: "1001".into(),
            caller_name: "Alice".into(),
            callee: "4930700".into(),
            did: None,
            trunk_id: None,
            account_id: Some(WHOLE),
            at: s(0),
        }),
        CallCommand::Authorize {
            max_duration_s: None,
            reservation_id: None,
            at: s(0),
        },
        CallCommand::CreateLeg {
            leg_id: leg,
            target: "conference:4930700".into(),
            trunk_id: None,
            at: s(0),
        },
        CallCommand::Answer { leg_id: leg, at: s(0) },
        CallCommand::End {
            hangup_by: Party::Caller,
            sip_status: 200,
            reason: None,
            at: s(60),
            media: vec![],
        },
    ] {
        world.call(TENANT, conference, command).await;
    }
    catch_up(&store).await;
    let charged = |call: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm_charges WHERE call_id = $1")
                .bind(call)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(charged(phone).await, 1, "the phone call is charged");
    assert_eq!(
        charged(conference).await,
        0,
        "the conference call is not the caller's to pay"
    );
    let cdrs: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_cdrs WHERE call_id = $1 AND charge IS NULL")
        .bind(conference)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cdrs, 1, "the conference call has its CDR, without a charge");
}
