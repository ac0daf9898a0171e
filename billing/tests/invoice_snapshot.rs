//! A whole invoice, snapshotted: calls and a conference rated by the engine, a closed month,
//! a late charge and a correction landing in the next month, as billed and as corrected.

use std::str::FromStr;

use billing::conference::{self, ConferenceSession, ParticipantStay, Role};
use billing::invoice::{self, BillingPeriod, InvoiceCommand, InvoiceState, Service, TaxMode, TaxPolicy};
use billing::rating::{self, Leg, RateCard};
use billing::tariff::{CompiledTariff, Crossing, Prefix, Rate, TariffVersion};
use billing::Posting;
use chrono::{DateTime, TimeDelta, Utc};
use expect_test::expect;
use rust_decimal::Decimal;
use uuid::Uuid;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test literal is a decimal")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test literal is RFC 3339")
        .with_timezone(&Utc)
}

fn deck() -> CompiledTariff {
    let rate = |prefix: &str, first: u32, next: u32, price: &str| {
        Rate::simple(Prefix::parse(prefix).expect("valid prefix"), first, next, d(price))
    };
    let mut mobile = rate("4917", 30, 6, "0.02");
    mobile.connection_fee = d("0.015");
    let version = TariffVersion {
        tariff_id: Uuid::from_u128(70),
        version: 1,
        effective_from: at("2024-01-01T00:00:00Z"),
        currency: "EUR".to_string(),
        rates: vec![
            rate("49", 60, 60, "0.05"),
            rate("4930", 60, 60, "0.03"),
            mobile,
            rate("1", 1, 1, "0.06"),
        ],
        offpeak_window: None,
        crossing: Crossing::WholeCall,
        posting: Posting::default(),
    };
    version.validate().expect("valid tariff");
    CompiledTariff::new(version)
}

fn apply(state: InvoiceState, command: InvoiceCommand) -> InvoiceState {
    let events = invoice::decide(&command, &state).expect("command accepted");
    events.iter().fold(state, invoice::evolve)
}

fn record_call(
    state: InvoiceState,
    tariff: &CompiledTariff,
    id: u128,
    destination: &str,
    when: &str,
    duration_s: u32,
) -> InvoiceState {
    let leg = Leg {
        destination,
        answered_at: at(when),
        duration_s,
    };
    let charge = rating::rate_leg(tariff, &leg, chrono_tz::Europe::Berlin).expect("rates");
    apply(
        state,
        InvoiceCommand::RecordCharge {
            charge_id: Uuid::from_u128(id),
            occurred_at: leg.answered_at,
            service: Service::Calls,
            destination: charge.explanation.matched_prefix.to_string(),
            amount: charge.amount,
        },
    )
}

#[test]
fn a_whole_invoice_as_billed_and_as_corrected() {
    let tariff = deck();
    let vat = TaxPolicy {
        rate_pct: d("19"),
        mode: TaxMode::Exclusive,
    };
    let mut book = apply(
        InvoiceState::default(),
        InvoiceCommand::Open {
            account_id: Uuid::from_u128(0xC),
            tenant_id: Uuid::from_u128(0xA),
            currency: "EUR".to_string(),
            billing_tz: chrono_tz::Europe::Berlin,
        },
    );
    book = record_call(book, &tariff, 1, "+4930901820", "2024-03-04T09:15:00Z", 754);
    book = record_call(book, &tariff, 2, "+4930123456", "2024-03-05T16:00:10Z", 61);
    book = record_call(book, &tariff, 3, "+491761234567", "2024-03-07T08:00:00Z", 31);
    book = record_call(book, &tariff, 4, "+491761234567", "2024-03-07T08:05:00Z", 29);
    book = record_call(book, &tariff, 5, "+12125550100", "2024-03-11T14:00:00Z", 180);
    book = record_call(book, &tariff, 6, "+4989123456", "2024-03-20T11:00:00Z", 600);
    // 23:30 UTC on 31 March is 01:30 CEST on 1 April: April's invoice.
    book = record_call(book, &tariff, 7, "+4989123456", "2024-03-31T23:30:00Z", 120);
    book = record_call(book, &tariff, 9, "+4930654321", "2024-04-02T07:00:00Z", 3600);

    // A conference in March, owned by this account, billed at the access number's rate.
    let card = RateCard::for_destination(&tariff, "+4930555000").expect("access number rates");
    let start = at("2024-03-14T10:00:00Z");
    let stay = |leg: u128, role: Role, minutes: i64| ParticipantStay {
        leg_id: Uuid::from_u128(leg),
        role,
        joined_at: start,
        left_at: start + TimeDelta::minutes(minutes),
    };
    let session = ConferenceSession {
        room_id: Uuid::from_u128(50),
        owner_account_id: Uuid::from_u128(0xC),
        moderated: false,
        stays: vec![
            stay(101, Role::Moderator, 30),
            stay(102, Role::Participant, 25),
            stay(103, Role::Participant, 20),
        ],
    };
    let charges = conference::conference_charges(&session, &card, chrono_tz::Europe::Berlin).expect("session rates");
    for (n, leg) in charges.iter().enumerate() {
        book = apply(
            book,
            InvoiceCommand::RecordCharge {
                charge_id: Uuid::from_u128(200 + n as u128),
                occurred_at: leg.billed_from,
                service: Service::Conferences,
                destination: leg.charge.explanation.matched_prefix.to_string(),
                amount: leg.charge.amount,
            },
        );
    }

    let march = BillingPeriod { year: 2024, month: 3 };
    let april = BillingPeriod { year: 2024, month: 4 };
    book = apply(
        book,
        InvoiceCommand::ClosePeriod {
            period: march,
            now: at("2024-04-01T06:00:00Z"),
            tax: vat,
        },
    );
    // After closing: a late March call, and a correction of a March charge.
    book = record_call(book, &tariff, 8, "+4930777777", "2024-03-29T12:00:00Z", 300);
    book = apply(
        book,
        InvoiceCommand::CorrectCharge {
            correction_id: Uuid::from_u128(900),
            charge_id: Uuid::from_u128(6),
            corrected_amount: d("0.25"),
            reason: "goodwill: half price".to_string(),
        },
    );

    let march_billed = invoice::as_billed(&book, march, vat).expect("book is open");
    expect![[r#"
        Invoice 2024-03 for account 00000000-0000-0000-0000-00000000000c (EUR, closed)
        service      destination    kind                    count         amount
        calls        1              charges                     1        0.18000
        calls        49             charges                     1        0.50000
        calls        4917           charges                     2        0.05200
        calls        4930           charges                     2        0.45000
        conferences  4930           charges                     3        2.25000
        net             3.43
        tax             0.65  (19% added)
        total           4.08
    "#]]
    .assert_eq(&march_billed.render());

    let april_draft = invoice::as_billed(&book, april, vat).expect("book is open");
    expect![[r#"
        Invoice 2024-04 for account 00000000-0000-0000-0000-00000000000c (EUR, draft)
        service      destination    kind                    count         amount
        calls        49             charges                     1        0.10000
        calls        49             adjustments 2024-03         1       -0.25000
        calls        4930           charges                     1        1.80000
        calls        4930           adjustments 2024-03         1        0.15000
        net             1.80
        tax             0.34  (19% added)
        total           2.14
    "#]]
    .assert_eq(&april_draft.render());

    let march_corrected = invoice::as_corrected(&book, march, vat).expect("book is open");
    expect![[r#"
        Invoice 2024-03 for account 00000000-0000-0000-0000-00000000000c (EUR, closed)
        service      destination    kind                    count         amount
        calls        1              charges                     1        0.18000
        calls        49             charges                     1        0.50000
        calls        49             adjustments 2024-03         1       -0.25000
        calls        4917           charges                     2        0.05200
        calls        4930           charges                     2        0.45000
        calls        4930           adjustments 2024-03         1        0.15000
        conferences  4930           charges                     3        2.25000
        net             3.33
        tax             0.63  (19% added)
        total           3.96
    "#]]
    .assert_eq(&march_corrected.render());

    let inclusive = TaxPolicy {
        rate_pct: d("19"),
        mode: TaxMode::Inclusive,
    };
    let april_inclusive = invoice::as_billed(&book, april, inclusive).expect("book is open");
    expect![[r#"
        Invoice 2024-04 for account 00000000-0000-0000-0000-00000000000c (EUR, draft)
        service      destination    kind                    count         amount
        calls        49             charges                     1        0.10000
        calls        49             adjustments 2024-03         1       -0.25000
        calls        4930           charges                     1        1.80000
        calls        4930           adjustments 2024-03         1        0.15000
        net             1.51
        tax             0.29  (19% included)
        total           1.80
    "#]]
    .assert_eq(&april_inclusive.render());
}
