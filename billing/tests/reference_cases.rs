//! The eight reference cases of billing-reference.md, one test each, computed by the engine.

use std::str::FromStr;

use billing::account::{self, AccountCommand, AccountEvent, AccountKind, AccountState};
use billing::conference::{self, ConferenceSession, ParticipantStay, Role};
use billing::rating::{self, Leg, RateCard};
use billing::tariff::{CompiledTariff, Crossing, PeriodPrices, Prefix, Rate, TariffVersion};
use billing::{OffPeakWindow, Posting};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use uuid::Uuid;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test literal is a decimal")
}

fn prefix(s: &str) -> Prefix {
    Prefix::parse(s).expect("test prefix is valid")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test literal is RFC 3339")
        .with_timezone(&Utc)
}

fn tariff(rates: Vec<Rate>, window: Option<OffPeakWindow>, crossing: Crossing) -> CompiledTariff {
    let version = TariffVersion {
        tariff_id: Uuid::from_u128(7),
        version: 1,
        effective_from: at("2024-01-01T00:00:00Z"),
        currency: "EUR".to_string(),
        rates,
        offpeak_window: window,
        crossing,
        posting: Posting::default(),
    };
    version.validate().expect("reference tariff is valid");
    CompiledTariff::new(version)
}

fn charge(tariff: &CompiledTariff, destination: &str, duration_s: u32) -> rating::Charge {
    let leg = Leg {
        destination,
        answered_at: at("2024-05-06T10:00:00Z"),
        duration_s,
    };
    rating::rate_leg(tariff, &leg, chrono_tz::Europe::Berlin).expect("leg rates")
}

fn open_prepaid(balance: &str) -> AccountState {
    let events = [
        AccountEvent::Opened(account::AccountOpened {
            account_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            kind: AccountKind::Prepaid,
            currency: "EUR".to_string(),
            billing_tz: chrono_tz::Europe::Berlin,
        }),
        AccountEvent::ToppedUp(account::FundsToppedUp {
            payment_id: Uuid::from_u128(3),
            amount: d(balance),
        }),
    ];
    events.iter().fold(AccountState::default(), account::evolve)
}

fn reserve(
    state: &AccountState,
    card: &RateCard,
    reservation: u128,
) -> Result<Vec<AccountEvent>, account::AccountRejection> {
    account::decide(
        &AccountCommand::Reserve {
            reservation_id: Uuid::from_u128(reservation),
            call_id: Uuid::from_u128(reservation + 100),
            rate_card: card.clone(),
            now: at("2024-05-06T10:00:00Z"),
            duration_cap_s: None,
        },
        state,
    )
}

fn reserved(events: &[AccountEvent]) -> &account::FundsReserved {
    match events {
        [AccountEvent::Reserved(reserved)] => reserved,
        other => panic!("expected one FundsReserved, got {other:?}"),
    }
}

#[test]
fn case_1_conference_owner_pays_each_leg_at_the_access_rate() {
    let access = tariff(
        vec![Rate::simple(prefix("4930"), 60, 60, d("0.03"))],
        None,
        Crossing::WholeCall,
    );
    let card = RateCard::for_destination(&access, "+49301234567").expect("access number rates");
    let start = at("2024-05-06T10:00:00Z");
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
            stay(1, Role::Moderator, 30),
            stay(2, Role::Participant, 25),
            stay(3, Role::Participant, 20),
        ],
    };
    let charges = conference::conference_charges(&session, &card, chrono_tz::Europe::Berlin).expect("session rates");
    let amounts: Vec<Decimal> = charges.iter().map(|c| c.charge.amount).collect();
    assert_eq!(amounts, vec![d("0.90"), d("0.75"), d("0.60")]);
    assert!(charges.iter().all(|c| c.owner_account_id == Uuid::from_u128(0xC)));
    assert_eq!(conference::total(&charges), d("2.25"));
}

#[test]
fn case_2_prepaid_5_00_at_0_10_allows_50_minutes() {
    let deck = tariff(
        vec![Rate::simple(prefix("49"), 60, 60, d("0.10"))],
        None,
        Crossing::WholeCall,
    );
    let card = RateCard::for_destination(&deck, "4917612345678").expect("rates");
    let state = open_prepaid("5.00");
    let events = reserve(&state, &card, 10).expect("authorized");
    let max = reserved(&events).max_duration;
    assert_eq!(max.actual_s, 3000);
    assert_eq!(max.announced_min, 50);
    assert_eq!(max.charge_at_actual, d("5.00"));
}

#[test]
fn case_3_prepaid_10_00_with_connection_fee_allows_98_minutes() {
    let mut rate = Rate::simple(prefix("49"), 60, 60, d("0.10"));
    rate.connection_fee = d("0.20");
    let deck = tariff(vec![rate], None, Crossing::WholeCall);
    let card = RateCard::for_destination(&deck, "4917612345678").expect("rates");
    let state = open_prepaid("10.00");
    let events = reserve(&state, &card, 10).expect("authorized");
    let max = reserved(&events).max_duration;
    assert_eq!(max.actual_s, 5880);
    assert_eq!(max.announced_min, 98);
    assert_eq!(max.charge_at_actual, d("10.00"));
}

#[test]
fn case_4_thirty_six_second_rounding_of_30_6_intervals() {
    let deck = tariff(
        vec![Rate::simple(prefix("44"), 30, 6, d("0.02"))],
        None,
        Crossing::WholeCall,
    );
    let long = charge(&deck, "447700900123", 31);
    assert_eq!(long.billed_s, 36);
    assert_eq!(long.amount, d("0.012"));
    assert_eq!(long.amount.to_string(), "0.01200");
    let short = charge(&deck, "447700900123", 29);
    assert_eq!(short.billed_s, 30);
    assert_eq!(short.amount, d("0.010"));
}

#[test]
fn case_5_grace_period_makes_short_calls_free() {
    let mut rate = Rate::simple(prefix("33"), 60, 60, d("0.10"));
    rate.grace_period_s = 5;
    rate.connection_fee = d("0.05");
    let deck = tariff(vec![rate], None, Crossing::WholeCall);
    let within = charge(&deck, "33612345678", 5);
    assert_eq!(within.amount, d("0.00"));
    assert_eq!(within.billed_s, 0);
    let beyond = charge(&deck, "33612345678", 6);
    assert_eq!(beyond.billed_s, 60);
    assert_eq!(beyond.amount, d("0.15"));
}

#[test]
fn case_6_exact_decimal_amounts_never_drift() {
    let per_second = tariff(
        vec![Rate::simple(prefix("1"), 1, 1, d("0.06"))],
        None,
        Crossing::WholeCall,
    );
    assert_eq!(charge(&per_second, "12125550100", 180).amount, d("0.18"));
    let per_minute = tariff(
        vec![Rate::simple(prefix("1"), 60, 60, d("0.05"))],
        None,
        Crossing::WholeCall,
    );
    assert_eq!(charge(&per_minute, "12125550100", 600).amount, d("0.50"));
}

fn peak_offpeak_tariff(crossing: Crossing) -> CompiledTariff {
    let mut rate = Rate::simple(prefix("49"), 60, 60, d("0.10"));
    rate.offpeak = Some(PeriodPrices {
        first_price_per_minute: d("0.04"),
        next_price_per_minute: d("0.04"),
    });
    let window = OffPeakWindow::from_str("19:00-07:00").expect("valid window");
    tariff(vec![rate], Some(window), crossing)
}

#[test]
fn case_7_peak_offpeak_crossing_whole_call_and_split() {
    let berlin: Tz = chrono_tz::Europe::Berlin;
    let answered_at = berlin
        .with_ymd_and_hms(2024, 5, 6, 18, 50, 0)
        .single()
        .expect("unambiguous local time")
        .with_timezone(&Utc);
    let leg = Leg {
        destination: "4930123456",
        answered_at,
        duration_s: 20 * 60,
    };
    let whole = rating::rate_leg(&peak_offpeak_tariff(Crossing::WholeCall), &leg, berlin).expect("leg rates");
    assert_eq!(whole.amount, d("2.00"));
    let split = rating::rate_leg(&peak_offpeak_tariff(Crossing::Split), &leg, berlin).expect("leg rates");
    assert_eq!(split.amount, d("1.40"));
    let seconds_by_price: Vec<(u32, Decimal)> = split
        .explanation
        .lines
        .iter()
        .map(|line| (line.seconds(), line.price_per_minute))
        .collect();
    assert_eq!(
        seconds_by_price,
        vec![(60, d("0.10")), (540, d("0.10")), (600, d("0.04"))]
    );
}

#[test]
fn case_8_concurrent_prepaid_calls_never_overdraw() {
    let deck = tariff(
        vec![Rate::simple(prefix("49"), 60, 60, d("0.10"))],
        None,
        Crossing::WholeCall,
    );
    let card = RateCard::for_destination(&deck, "4930123456").expect("rates");
    let mut state = open_prepaid("1.00");

    // The first call is authorized for at most 10 minutes and reserves their charge.
    let first = reserve(&state, &card, 10).expect("first call authorized");
    let first_max = reserved(&first).max_duration;
    assert_eq!(first_max.actual_s, 600);
    assert_eq!(reserved(&first).amount, d("1.00"));
    state = first.iter().fold(state, account::evolve);

    // While it runs, only what remains may be reserved: nothing.
    assert_eq!(
        reserve(&state, &card, 20),
        Err(account::AccountRejection::InsufficientFunds {
            available: d("0.00"),
            first_charge: d("0.10"),
        })
    );

    // Had the first call asked for 4 minutes only, the second gets the 6 that remain.
    let mut capped = open_prepaid("1.00");
    let capped_first = account::decide(
        &AccountCommand::Reserve {
            reservation_id: Uuid::from_u128(11),
            call_id: Uuid::from_u128(111),
            rate_card: card.clone(),
            now: at("2024-05-06T10:00:00Z"),
            duration_cap_s: Some(240),
        },
        &capped,
    )
    .expect("capped call authorized");
    capped = capped_first.iter().fold(capped, account::evolve);
    let second = reserve(&capped, &card, 21).expect("second call authorized");
    assert_eq!(reserved(&second).max_duration.actual_s, 360);
    capped = second.iter().fold(capped, account::evolve);

    // Both calls run to their limits and settle: together they cost exactly the balance.
    let context = card.context(chrono_tz::Europe::Berlin);
    let mut settled_total = Decimal::ZERO;
    for (reservation, duration_s) in [(11u128, 240u32), (21, 360)] {
        let amount = rating::price(&context, at("2024-05-06T10:00:00Z"), duration_s)
            .expect("rates")
            .amount;
        settled_total += amount;
        let events = account::decide(
            &AccountCommand::Settle {
                charge_id: Uuid::from_u128(reservation + 1000),
                call_id: Uuid::from_u128(reservation + 100),
                reservation_id: Some(Uuid::from_u128(reservation)),
                amount,
                currency: "EUR".to_string(),
            },
            &capped,
        )
        .expect("settles");
        capped = events.iter().fold(capped, account::evolve);
    }
    assert!(settled_total <= d("1.00"));
    assert_eq!(capped.balance, d("0.00"));
    assert!(capped.reservations.is_empty());
}
