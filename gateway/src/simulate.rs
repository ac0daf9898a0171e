//! `ledgerline simulate` and `ledgerline up --demo`: realistic call traffic through the real
//! deciders into the log, deterministically from a seed.
//!
//! Tenants, extensions, tariffs and accounts are set up through the command handler. The bulk
//! (calls, reservations, settlements, invoice lines) is decided in memory with the same pure
//! deciders (`domain::call::decide`, `billing::account::decide`, `billing::invoice::decide`)
//! against state folded with their `evolve`, and appended in batches of calls, one
//! transaction per batch, each stream at its expected version: the log is what a live system
//! would have written, at the rate a load generator needs. Every id, time and choice comes
//! from the seed (a splitmix64 generator), so the same seed writes the same log.
//!
//! Calls follow a busy-hour curve over one day; some are busy, unanswered, failed, or rejected
//! for want of prepaid funds; some are held or transferred; prepaid accounts reserve funds
//! and top up when low; postpaid accounts run on credit. The charge a simulated call settles
//! is rated with `billing::rating::rate_leg` exactly as the `billing` projection rates it.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use billing::account::{self, AccountCommand, AccountEvent, AccountKind, AccountState};
use billing::aggregates::{Account, InvoiceBook, Tariff};
use billing::invoice::{self, InvoiceCommand, InvoiceEvent, InvoiceState, Service};
use billing::rating::{self, Leg, RateCard};
use billing::tariff::{CompiledTariff, Crossing, PeriodPrices, Prefix, Rate, TariffCommand, TariffState};
use billing::{OffPeakWindow, Posting};
use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use commands::{CommandContext, CommandHandler, EventStore, Expected, Metadata, NewEvent, StreamRef, StreamWrite};
use domain::call::{CallCommand, CallEvent, CallInitiated, CallState, Direction, EndReason, Party};
use domain::Aggregate;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::roles;
use crate::simulate_conferences::{self, ConferenceTenant};

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Tenants to create, each with extensions, a tariff, a prepaid and a postpaid account.
    #[arg(long, default_value_t = 2)]
    pub tenants: u32,
    /// Calls in all, spread over the tenants and over one day.
    #[arg(long, default_value_t = 1000)]
    pub calls: u32,
    /// Conference sessions, in each tenant's room (one room per tenant, owned by its postpaid account).
    #[arg(long, default_value_t = 0)]
    pub conferences: u32,
    /// Everything (ids, times, outcomes) follows from the seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The simulated day (UTC); March 31 by default, so the period closes the next morning.
    #[arg(long, default_value = "2025-03-31")]
    pub day: NaiveDate,
    /// Calls per append (one transaction each).
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
}

pub async fn run(data_dir: &Path, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let started = Instant::now();
    let result = simulate(&store, &args).await;
    db.close().await;
    let summary = result?;
    say!(
        "simulate: seed {} day {}: {} tenants, {} calls ({} answered, {} rejected for funds), {} events in {:.1} s",
        args.seed,
        args.day,
        args.tenants,
        summary.calls,
        summary.answered,
        summary.rejected,
        summary.events,
        started.elapsed().as_secs_f64()
    );
    if summary.conferences > 0 {
        say!("simulate: {} conference sessions", summary.conferences);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub calls: u64,
    pub conferences: u64,
    pub answered: u64,
    pub rejected: u64,
    pub events: u64,
}

/// splitmix64: small, fast, and the same sequence on every platform forever.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_1ed9_e71e_u64)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn uuid(&mut self) -> Uuid {
        let hi = u128::from(self.next_u64());
        let lo = u128::from(self.next_u64());
        // Version 4 / RFC 4122 variant bits, so the ids look like any other.
        let raw = (hi << 64 | lo) & !(0xF000u128 << 64) & !(0xC000u128 << 48);
        Uuid::from_u128(raw | (0x4000u128 << 64) | (0x8000u128 << 48))
    }
}

/// Relative call volume per hour of the day: quiet nights, morning and afternoon busy hours.
const HOUR_WEIGHTS: [u64; 24] = [
    1, 1, 1, 1, 1, 1, 2, 5, 9, 10, 10, 9, 6, 8, 10, 9, 8, 5, 3, 2, 2, 1, 1, 1,
];

/// Destinations callers dial: (number prefix, digits that follow).
const DESTINATIONS: [(&str, u32); 7] = [
    ("+1212555", 4),
    ("+4420794", 5),
    ("+4930", 7),
    ("+49151", 7),
    ("+49891", 6),
    ("+3314", 7),
    ("+8613", 8),
];

fn d(text: &str) -> Decimal {
    // Only literals of this file reach here.
    Decimal::from_str(text).expect("a decimal literal")
}

/// The tariff every simulated tenant gets: per-second and per-minute rates, a connection
/// fee, free seconds, a grace period and peak/off-peak prices.
pub fn sim_rates() -> Vec<Rate> {
    // Only literals of this file reach here.
    let p = |s: &str| Prefix::parse(s).expect("a prefix literal");
    let mut us = Rate::simple(p("1"), 6, 6, d("0.010"));
    us.grace_period_s = 3;
    let uk = Rate::simple(p("44"), 60, 60, d("0.020"));
    let mut de = Rate::simple(p("49"), 60, 60, d("0.030"));
    de.offpeak = Some(PeriodPrices {
        first_price_per_minute: d("0.015"),
        next_price_per_minute: d("0.015"),
    });
    let mut berlin = Rate::simple(p("4930"), 30, 6, d("0.020"));
    berlin.free_seconds = 5;
    berlin.offpeak = Some(PeriodPrices {
        first_price_per_minute: d("0.010"),
        next_price_per_minute: d("0.010"),
    });
    let mut mobile = Rate::simple(p("4915"), 60, 60, d("0.120"));
    mobile.connection_fee = d("0.05");
    let fr = Rate::simple(p("33"), 60, 60, d("0.025"));
    let mut cn = Rate::simple(p("86"), 60, 60, d("0.080"));
    cn.post_call_surcharge_pct = d("5");
    vec![us, uk, de, berlin, mobile, fr, cn]
}

struct SimTenant {
    id: Uuid,
    extensions: Vec<String>,
    tariff: Arc<CompiledTariff>,
    /// (account id, prepaid?)
    accounts: Vec<(Uuid, bool)>,
    trunk: Uuid,
}

/// A stream the simulator writes in batches: its state and the version it is at.
struct Tracked<S> {
    tenant: Uuid,
    stream_id: String,
    state: S,
    version: u64,
    pending: Vec<NewEvent>,
}

impl<S> Tracked<S> {
    fn take(&mut self) -> Option<StreamWrite> {
        if self.pending.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut self.pending);
        let write = StreamWrite {
            tenant_id: self.tenant,
            stream_id: self.stream_id.clone(),
            expected: Expected::Exact(self.version),
            events,
        };
        self.version += write.events.len() as u64;
        Some(write)
    }
}

fn meta() -> Metadata {
    Metadata {
        actor: Some("simulator".to_string()),
        node_id: Some("sim".to_string()),
        ..Metadata::default()
    }
}

pub async fn simulate(store: &EventStore, args: &SimulateArgs) -> anyhow::Result<Summary> {
    let mut rng = Rng::new(args.seed);
    let handler = CommandHandler::new(store.clone());
    let day_start = args.day.and_time(NaiveTime::MIN).and_utc();
    let setup_at = day_start - TimeDelta::hours(1);
    let mut summary = Summary::default();
    let mut tenants = Vec::new();
    let mut accounts: HashMap<Uuid, Tracked<AccountState>> = HashMap::new();
    let mut books: HashMap<Uuid, Tracked<InvoiceState>> = HashMap::new();
    for n in 0..args.tenants {
        let tenant = setup_tenant(&handler, &mut rng, args.seed, n, setup_at).await?;
        for (account, _) in &tenant.accounts {
            let loaded = handler
                .load::<Account>(&StreamRef::of::<Account>(tenant.id, account))
                .await?;
            accounts.insert(
                *account,
                Tracked {
                    tenant: tenant.id,
                    stream_id: account::stream_id(*account),
                    state: loaded.state,
                    version: loaded.version,
                    pending: Vec::new(),
                },
            );
            let loaded = handler
                .load::<InvoiceBook>(&StreamRef::of::<InvoiceBook>(tenant.id, account))
                .await?;
            books.insert(
                *account,
                Tracked {
                    tenant: tenant.id,
                    stream_id: invoice::stream_id(*account),
                    state: loaded.state,
                    version: loaded.version,
                    pending: Vec::new(),
                },
            );
        }
        tenants.push(tenant);
    }
    if tenants.is_empty() {
        return Ok(summary);
    }
    // Start times first, in order, so each account's events follow the clock.
    let weight_sum: u64 = HOUR_WEIGHTS.iter().sum();
    let mut starts: Vec<DateTime<Utc>> = (0..args.calls)
        .map(|_| {
            let mut pick = rng.below(weight_sum);
            let mut hour = 0;
            while pick >= HOUR_WEIGHTS[hour] {
                pick -= HOUR_WEIGHTS[hour];
                hour += 1;
            }
            day_start + TimeDelta::seconds((hour as i64) * 3600 + rng.below(3600) as i64)
        })
        .collect();
    starts.sort();
    let mut writes: Vec<StreamWrite> = Vec::new();
    for (i, start) in starts.iter().enumerate() {
        let tenant = &tenants[rng.below(tenants.len() as u64) as usize];
        let call_write = simulate_call(&mut rng, tenant, *start, &mut accounts, &mut books, &mut summary)?;
        summary.events += call_write.events.len() as u64;
        writes.push(call_write);
        if (i + 1) % args.batch.max(1) as usize == 0 || i + 1 == starts.len() {
            flush(store, &mut writes, &mut accounts, &mut books, &mut summary).await?;
        }
    }
    if args.conferences > 0 {
        let rooms: Vec<ConferenceTenant> = tenants
            .iter()
            .enumerate()
            .map(|(n, t)| ConferenceTenant {
                tenant_id: t.id,
                owner_account_id: t.accounts[1].0,
                moderated: n % 2 == 0,
                tariff: &t.tariff,
            })
            .collect();
        let (room_writes, owed) = simulate_conferences::simulate(
            &handler,
            &mut rng,
            &rooms,
            args.conferences,
            day_start,
            setup_at,
            &mut summary,
        )
        .await?;
        writes.extend(room_writes);
        // The owner settles each participant leg and finds it on the invoice, as for calls.
        for charge in owed {
            let tracked = accounts.get_mut(&charge.account_id).ok_or_else(|| anyhow!("account"))?;
            decide_account(
                &mut rng,
                tracked,
                &AccountCommand::Settle {
                    charge_id: charge.call_id,
                    call_id: charge.call_id,
                    reservation_id: None,
                    amount: charge.amount,
                    currency: "EUR".into(),
                },
                charge.ended_at,
            )
            .map_err(|e| anyhow!("settle a conference leg: {e}"))?;
            let book = books.get_mut(&charge.account_id).ok_or_else(|| anyhow!("book"))?;
            decide_invoice(
                &mut rng,
                book,
                &InvoiceCommand::RecordCharge {
                    charge_id: charge.call_id,
                    occurred_at: charge.billed_from,
                    service: Service::Conferences,
                    destination: charge.prefix,
                    amount: charge.amount,
                },
                charge.ended_at,
            )?;
        }
        flush(store, &mut writes, &mut accounts, &mut books, &mut summary).await?;
    }
    // The next morning, every book's period closes (19 % VAT added).
    let close_at = day_start + TimeDelta::days(1) + TimeDelta::hours(6);
    let period = billing::invoice::BillingPeriod::containing(day_start, chrono_tz::Europe::Berlin);
    // In a stable order: every id comes from the one generator.
    let mut book_ids: Vec<Uuid> = books.keys().copied().collect();
    book_ids.sort();
    for id in book_ids {
        let Some(tracked) = books.get_mut(&id) else {
            continue;
        };
        if tracked
            .state
            .info
            .as_ref()
            .and_then(|info| period.ends_at(info.billing_tz))
            .is_some_and(|end| end <= close_at)
        {
            let command = InvoiceCommand::ClosePeriod {
                period,
                now: close_at,
                tax: billing::invoice::TaxPolicy {
                    rate_pct: d("19"),
                    mode: billing::invoice::TaxMode::Exclusive,
                },
            };
            decide_invoice(&mut rng, tracked, &command, close_at)?;
        }
    }
    flush(store, &mut writes, &mut accounts, &mut books, &mut summary).await?;
    Ok(summary)
}

async fn flush(
    store: &EventStore,
    writes: &mut Vec<StreamWrite>,
    accounts: &mut HashMap<Uuid, Tracked<AccountState>>,
    books: &mut HashMap<Uuid, Tracked<InvoiceState>>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    // Accounts and books in a stable order (HashMap order is not), after the calls.
    let mut ids: Vec<Uuid> = accounts.keys().copied().collect();
    ids.sort();
    for id in &ids {
        if let Some(write) = accounts.get_mut(id).and_then(Tracked::take) {
            summary.events += write.events.len() as u64;
            writes.push(write);
        }
    }
    for id in &ids {
        if let Some(write) = books.get_mut(id).and_then(Tracked::take) {
            summary.events += write.events.len() as u64;
            writes.push(write);
        }
    }
    if !writes.is_empty() {
        store.append(writes).await?;
        writes.clear();
    }
    Ok(())
}

async fn setup_tenant(
    handler: &CommandHandler,
    rng: &mut Rng,
    seed: u64,
    n: u32,
    at: DateTime<Utc>,
) -> anyhow::Result<SimTenant> {
    let id = rng.uuid();
    let mut ctx = || CommandContext::new(rng.uuid(), "simulator", "sim", at);
    let domain = format!("t{n}-s{seed}.sim.ledgerline.test");
    commands::directory::create_tenant(
        handler,
        &ctx(),
        id,
        &format!("Tenant {n} (seed {seed})"),
        &domain,
        domain::tenant::Limits {
            max_extensions: 100,
            max_concurrent_calls: 100,
        },
    )
    .await
    .map_err(|e| anyhow!("create tenant {n}: {e} (was this seed simulated already?)"))?;
    let mut extensions = Vec::new();
    for e in 0..5u32 {
        let number = format!("{}", 1001 + e);
        let ext_id = Uuid::new_v5(&id, number.as_bytes());
        commands::directory::provision_extension(
            handler,
            &ctx(),
            id,
            ext_id,
            &number,
            &format!("User {number}"),
            &format!("pw-{number}-{seed}"),
        )
        .await
        .map_err(|e| anyhow!("provision {number}: {e}"))?;
        extensions.push(number);
    }
    let tariff_id = Uuid::new_v5(&id, b"tariff");
    let crossing = if n.is_multiple_of(2) {
        Crossing::WholeCall
    } else {
        Crossing::Split
    };
    let window = OffPeakWindow::new(
        NaiveTime::from_hms_opt(19, 0, 0).ok_or_else(|| anyhow!("time"))?,
        NaiveTime::from_hms_opt(7, 0, 0).ok_or_else(|| anyhow!("time"))?,
    )
    .map_err(|e| anyhow!(e))?;
    for command in [
        TariffCommand::Create {
            tariff_id,
            tenant_id: id,
            name: "Standard".into(),
            currency: "EUR".into(),
        },
        TariffCommand::PublishVersion {
            effective_from: at,
            now: at,
            rates: sim_rates(),
            offpeak_window: Some(window),
            crossing,
            posting: Posting::default(),
        },
    ] {
        handler
            .execute::<Tariff, _>(&ctx(), StreamRef::of::<Tariff>(id, &tariff_id), |s: &TariffState| {
                billing::tariff::decide(&command, s)
            })
            .await
            .map_err(|e| anyhow!("tariff: {e}"))?;
    }
    let tariff = handler
        .load::<Tariff>(&StreamRef::of::<Tariff>(id, &tariff_id))
        .await?
        .state
        .in_force(at)
        .cloned()
        .ok_or_else(|| anyhow!("the tariff has a version"))?;
    let mut accounts = Vec::new();
    for (k, prepaid) in [(0u8, true), (1u8, false)] {
        let account = Uuid::new_v5(&id, &[b'a', k]);
        let kind = if prepaid {
            AccountKind::Prepaid
        } else {
            AccountKind::Postpaid { credit_limit: d("500") }
        };
        let mut commands = vec![
            AccountCommand::Open {
                account_id: account,
                tenant_id: id,
                kind,
                currency: "EUR".into(),
                billing_tz: chrono_tz::Europe::Berlin,
            },
            AccountCommand::AssignTariff {
                tariff_id,
                effective_from: at,
                now: at,
            },
        ];
        if prepaid {
            commands.push(AccountCommand::TopUp {
                payment_id: rng.uuid(),
                amount: d("20.00"),
            });
        }
        for command in commands {
            handler
                .execute::<Account, _>(
                    &CommandContext::new(rng.uuid(), "simulator", "sim", at),
                    StreamRef::of::<Account>(id, &account),
                    |s: &AccountState| account::decide(&command, s),
                )
                .await
                .map_err(|e| anyhow!("account: {e}"))?;
        }
        let open = InvoiceCommand::Open {
            account_id: account,
            tenant_id: id,
            currency: "EUR".into(),
            billing_tz: chrono_tz::Europe::Berlin,
        };
        handler
            .execute::<InvoiceBook, _>(
                &CommandContext::new(rng.uuid(), "simulator", "sim", at),
                StreamRef::of::<InvoiceBook>(id, &account),
                |s: &InvoiceState| invoice::decide(&open, s),
            )
            .await
            .map_err(|e| anyhow!("invoice book: {e}"))?;
        accounts.push((account, prepaid));
    }
    Ok(SimTenant {
        id,
        extensions,
        tariff,
        accounts,
        trunk: Uuid::new_v5(&id, b"trunk"),
    })
}

fn decide_account(
    rng: &mut Rng,
    tracked: &mut Tracked<AccountState>,
    command: &AccountCommand,
    at: DateTime<Utc>,
) -> Result<Vec<AccountEvent>, account::AccountRejection> {
    let events = account::decide(command, &tracked.state)?;
    for event in &events {
        tracked.state = Account::evolve(std::mem::take(&mut tracked.state), event);
        tracked
            .pending
            .push(NewEvent::from_domain(rng.uuid(), event, meta(), at));
    }
    Ok(events)
}

fn decide_invoice(
    rng: &mut Rng,
    tracked: &mut Tracked<InvoiceState>,
    command: &InvoiceCommand,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let events: Vec<InvoiceEvent> = invoice::decide(command, &tracked.state).map_err(|e| anyhow!("invoice: {e}"))?;
    for event in &events {
        tracked.state = InvoiceBook::evolve(std::mem::take(&mut tracked.state), event);
        tracked
            .pending
            .push(NewEvent::from_domain(rng.uuid(), event, meta(), at));
    }
    Ok(())
}

fn simulate_call(
    rng: &mut Rng,
    tenant: &SimTenant,
    start: DateTime<Utc>,
    accounts: &mut HashMap<Uuid, Tracked<AccountState>>,
    books: &mut HashMap<Uuid, Tracked<InvoiceState>>,
    summary: &mut Summary,
) -> anyhow::Result<StreamWrite> {
    summary.calls += 1;
    let call_id = rng.uuid();
    let ext = |rng: &mut Rng| tenant.extensions[rng.below(tenant.extensions.len() as u64) as usize].clone();
    let external = |rng: &mut Rng| {
        let (prefix, digits) = DESTINATIONS[rng.below(DESTINATIONS.len() as u64) as usize];
        let mut number = prefix.to_string();
        for _ in 0..digits {
            number.push(char::from(b'0' + rng.below(10) as u8));
        }
        number
    };
    let roll = rng.below(100);
    let (direction, caller, callee, did) = if roll < 60 {
        (Direction::Outbound, ext(rng), external(rng), None)
    } else if roll < 85 {
        let did = format!("+4930123450{:02}", rng.below(100));
        (Direction::Inbound, external(rng), ext(rng), Some(did))
    } else {
        (Direction::Internal, ext(rng), ext(rng), None)
    };
    let (account_id, prepaid) = if direction == Direction::Internal {
        (None, false)
    } else {
        let (id, prepaid) = tenant.accounts[usize::from(rng.chance(70))];
        (Some(id), prepaid)
    };
    let destination = match direction {
        Direction::Inbound => did.clone().unwrap_or_default(),
        _ => callee.clone(),
    };
    let mut state = CallState::default();
    let mut events: Vec<NewEvent> = Vec::new();
    let mut decide = |rng: &mut Rng, state: &mut CallState, command: CallCommand, at: DateTime<Utc>| {
        // The simulator only asks what the decider allows in this order.
        let decided = domain::call::decide(&command, state).map_err(|e| anyhow!("call decider: {e}"))?;
        for event in &decided {
            *state = domain::call::Call::evolve(std::mem::take(state), event);
            events.push(NewEvent::from_domain(rng.uuid(), event, meta(), at));
        }
        Ok::<Vec<CallEvent>, anyhow::Error>(decided)
    };
    decide(
        rng,
        &mut state,
        CallCommand::Initiate(CallInitiated {
            call_id,
            tenant_id: tenant.id,
            direction,
            caller: caller.clone(),
            caller_name: if direction == Direction::Inbound {
                String::new()
            } else {
                format!("User {caller}")
            },
            callee: callee.clone(),
            did,
            trunk_id: (direction != Direction::Internal).then_some(tenant.trunk),
            account_id,
            at: start,
        }),
        start,
    )?;
    let t = |s: i64| start + TimeDelta::seconds(s);
    // Prepaid calls reserve the charge of their longest duration first.
    let mut reservation: Option<(Uuid, u32)> = None;
    if let (Some(account), true) = (account_id, prepaid) {
        let tracked = accounts.get_mut(&account).ok_or_else(|| anyhow!("account"))?;
        // A low prepaid account is topped up, though not always in time: some calls are
        // then refused for want of funds, as in life.
        if tracked.state.available() < d("2") && rng.chance(60) {
            let top_up = AccountCommand::TopUp {
                payment_id: rng.uuid(),
                amount: d("20.00"),
            };
            decide_account(rng, tracked, &top_up, start).map_err(|e| anyhow!("top up: {e}"))?;
        }
        if let Ok(card) = RateCard::for_destination(&tenant.tariff, &destination) {
            let reservation_id = rng.uuid();
            let command = AccountCommand::Reserve {
                reservation_id,
                call_id,
                rate_card: card,
                now: start,
                duration_cap_s: Some(3600),
            };
            match decide_account(rng, tracked, &command, start) {
                Ok(decided) => {
                    let max_s = decided
                        .iter()
                        .find_map(|e| match e {
                            AccountEvent::Reserved(r) => Some(r.max_duration.actual_s),
                            _ => None,
                        })
                        .unwrap_or(3600);
                    reservation = Some((reservation_id, max_s));
                }
                Err(account::AccountRejection::InsufficientFunds { .. }) => {
                    summary.rejected += 1;
                    decide(
                        rng,
                        &mut state,
                        CallCommand::Reject {
                            reason: "insufficient funds".into(),
                            sip_status: 402,
                            at: t(0),
                        },
                        t(0),
                    )?;
                    return Ok(call_write(tenant.id, call_id, events));
                }
                Err(e) => return Err(anyhow!("reserve: {e}")),
            }
        }
    }
    decide(
        rng,
        &mut state,
        CallCommand::Authorize {
            max_duration_s: reservation.map(|r| r.1),
            reservation_id: reservation.map(|r| r.0),
            at: t(0),
        },
        t(0),
    )?;
    let leg = rng.uuid();
    decide(
        rng,
        &mut state,
        CallCommand::CreateLeg {
            leg_id: leg,
            target: format!("sip:{callee}"),
            trunk_id: (direction == Direction::Outbound).then_some(tenant.trunk),
            at: t(0),
        },
        t(0),
    )?;
    let ring_s = 1 + rng.below(3) as i64;
    decide(
        rng,
        &mut state,
        CallCommand::Ring {
            leg_id: leg,
            at: t(ring_s),
        },
        t(ring_s),
    )?;
    let outcome = rng.below(100);
    let mut answered_talk_s = None;
    if outcome < 70 {
        let answer_s = ring_s + 2 + rng.below(15) as i64;
        decide(
            rng,
            &mut state,
            CallCommand::Answer {
                leg_id: leg,
                at: t(answer_s),
            },
            t(answer_s),
        )?;
        // Talk time: mostly short, with a long tail (sum of uniforms, capped by funds).
        let mut talk_s = (rng.below(120) + rng.below(240) + rng.below(600) * u64::from(rng.chance(20))) as i64;
        if let Some((_, max_s)) = reservation {
            talk_s = talk_s.min(i64::from(max_s));
        }
        let now_s = answer_s;
        if rng.chance(10) && talk_s > 30 {
            decide(
                rng,
                &mut state,
                CallCommand::Hold {
                    by: Party::Caller,
                    at: t(now_s + 10),
                },
                t(now_s + 10),
            )?;
            decide(
                rng,
                &mut state,
                CallCommand::Resume {
                    by: Party::Caller,
                    at: t(now_s + 25),
                },
                t(now_s + 25),
            )?;
        }
        if rng.chance(5) && talk_s > 40 {
            let to = ext(rng);
            let at = t(now_s + 30);
            decide(
                rng,
                &mut state,
                CallCommand::Transfer {
                    by: Party::Callee,
                    to,
                    at,
                },
                at,
            )?;
        }
        let end_s = now_s + talk_s;
        let credit_out = reservation.is_some_and(|(_, max_s)| talk_s >= i64::from(max_s));
        let hangup_by = if credit_out {
            Party::System
        } else if rng.chance(50) {
            Party::Caller
        } else {
            Party::Callee
        };
        decide(
            rng,
            &mut state,
            CallCommand::End {
                hangup_by,
                sip_status: 200,
                reason: credit_out.then_some(EndReason::CreditExhausted),
                at: t(end_s),
                media: vec![],
            },
            t(end_s),
        )?;
        answered_talk_s = Some((t(answer_s), talk_s, t(end_s)));
        summary.answered += 1;
    } else {
        let (status, by, after) = match outcome {
            70..=81 => (486, Party::Callee, 3),
            82..=91 => (487, Party::Caller, 20 + rng.below(20) as i64),
            92..=95 => (480, Party::System, 30),
            _ => (503, Party::System, 1),
        };
        decide(
            rng,
            &mut state,
            CallCommand::End {
                hangup_by: by,
                sip_status: status,
                reason: None,
                at: t(ring_s + after),
                media: vec![],
            },
            t(ring_s + after),
        )?;
    }
    // Settle (or release) on the account and put the charge on the invoice.
    if let Some(account) = account_id {
        let tracked = accounts.get_mut(&account).ok_or_else(|| anyhow!("account"))?;
        match answered_talk_s {
            Some((answered_at, talk_s, end_at)) => {
                let leg = Leg {
                    destination: &destination,
                    answered_at,
                    duration_s: u32::try_from(talk_s).unwrap_or(0),
                };
                match rating::rate_leg(&tenant.tariff, &leg, chrono_tz::Europe::Berlin) {
                    Ok(charge) => {
                        decide_account(
                            rng,
                            tracked,
                            &AccountCommand::Settle {
                                charge_id: call_id,
                                call_id,
                                reservation_id: reservation.map(|r| r.0),
                                amount: charge.amount,
                                currency: "EUR".into(),
                            },
                            end_at,
                        )
                        .map_err(|e| anyhow!("settle: {e}"))?;
                        let book = books.get_mut(&account).ok_or_else(|| anyhow!("book"))?;
                        decide_invoice(
                            rng,
                            book,
                            &InvoiceCommand::RecordCharge {
                                charge_id: call_id,
                                occurred_at: answered_at,
                                service: Service::Calls,
                                destination: charge.explanation.matched_prefix.to_string(),
                                amount: charge.amount,
                            },
                            end_at,
                        )?;
                    }
                    Err(_) => release(rng, tracked, reservation, end_at)?,
                }
            }
            None => release(rng, tracked, reservation, start)?,
        }
    }
    Ok(call_write(tenant.id, call_id, events))
}

fn release(
    rng: &mut Rng,
    tracked: &mut Tracked<AccountState>,
    reservation: Option<(Uuid, u32)>,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    if let Some((reservation_id, _)) = reservation {
        decide_account(rng, tracked, &AccountCommand::Release { reservation_id }, at)
            .map_err(|e| anyhow!("release: {e}"))?;
    }
    Ok(())
}

fn call_write(tenant: Uuid, call_id: Uuid, events: Vec<NewEvent>) -> StreamWrite {
    StreamWrite {
        tenant_id: tenant,
        stream_id: format!("call-{call_id}"),
        expected: Expected::NoStream,
        events,
    }
}

/// `ledgerline up --demo`: one demo tenant with a day of traffic, once per database.
pub async fn demo(store: &EventStore, sip: std::net::SocketAddr) -> anyhow::Result<()> {
    let seeded: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM streams WHERE stream_id = 'sipdomain-t0-s424242.sim.ledgerline.test')",
    )
    .fetch_one(store.pool())
    .await?;
    if !seeded {
        let args = SimulateArgs {
            tenants: 1,
            calls: 300,
            conferences: 3,
            seed: 424_242,
            day: NaiveDate::from_ymd_opt(2025, 3, 31).ok_or_else(|| anyhow!("date"))?,
            batch: 100,
        };
        let summary = simulate(store, &args).await?;
        crate::projectors::catch_up_all(store, 5000).await?;
        say!(
            "  demo: seeded tenant t0-s424242.sim.ledgerline.test: 5 extensions (1001-1005), tariff Standard, \
             a prepaid and a postpaid account, {} calls ({} events)",
            summary.calls,
            summary.events
        );
    } else {
        say!("  demo: already seeded in this database");
    }
    say!("  demo: register a softphone: user 1001, password pw-1001-424242, domain t0-s424242.sim.ledgerline.test, server {sip} (UDP or TCP, digest MD5 or SHA-256); calls arrive with the SIP issue's B2BUA");
    say!(
        "  demo: conference room \"Team room\" (access number {}, host code {}, guest code {}); live: SELECT * FROM rm_live_conference_rooms; legs: SELECT * FROM rm_conference_legs",
        simulate_conferences::ACCESS_NUMBER,
        simulate_conferences::HOST_CODE,
        simulate_conferences::GUEST_CODE
    );
    say!("  demo: charges:  psql \"$DATABASE_URL\" -c \"SELECT call_id, destination, duration_s, amount, explanation FROM rm_charges ORDER BY answered_at LIMIT 20\"");
    say!("  demo: balances: psql \"$DATABASE_URL\" -c \"SELECT account_id, kind, balance, available FROM rm_balances_view\"");
    say!("  demo: invoice:  psql \"$DATABASE_URL\" -c \"SELECT document FROM rm_invoices\"");
    // The demo tenant's postpaid account and tariff, for finance's commands.
    let ids: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT b.account_id, v.tariff_id FROM rm_tenants t \
         JOIN rm_balances b ON b.tenant_id = t.tenant_id AND b.kind = 'postpaid' \
         JOIN rm_rating_tariff_versions v ON v.tenant_id = t.tenant_id \
         WHERE t.sip_domain = 't0-s424242.sim.ledgerline.test' LIMIT 1",
    )
    .fetch_optional(store.pool())
    .await?;
    if let Some((account, tariff)) = ids {
        say!("  demo: close a period:   ledgerline account close-period --account {account} --period 2025-04 --tax 19");
        say!("  demo: correct a tariff: ledgerline tariff correct --tariff {tariff} --version 1 --deck DECK.csv --reason \"...\"");
    }
    Ok(())
}
