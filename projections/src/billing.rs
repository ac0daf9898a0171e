//! Read model `billing`: CDRs with their legs, charges with explanations, balances with their
//! ledger, reservations, traffic reports and live calls, folded from one read of the log.
//!
//! Why one projection for all of these: a balance, the charges it reflects and the reports
//! that sum them then always stand at the same checkpoint, and a rebuild reads the log once
//! (the read is the limit of a rebuild; four projections would read it four times).
//!
//! How a batch is applied: load the rows the batch touches that earlier batches wrote (one
//! query per table, keyed by `unnest`), fold every event in log order in memory, then write
//! each table with one bulk statement. Rows written by a batch depend only on the events
//! before it in `(tx_id, global_position)` order, whatever the batch boundaries, so a replay
//! from zero gives the same rows as the live projection.
//!
//! Rating: a call's charge is computed when it ends, with the tariff assigned to its account
//! at its answer time (`TariffAssigned`), the tariff version in force at its answer time,
//! and the account's billing time zone; the tariff and account facts rating needs are kept
//! in this projection's own tables (`rm_rating_*`, `rm_balances`), so a charge depends only on
//! events before it in the log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use billing::account::{self, AccountEvent, AccountKind, TariffAssigned};
use billing::rating::{self, Leg};
use billing::tariff::{CompiledTariff, TariffEvent, TariffVersion, TariffVersionCorrected};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use chrono_tz::Tz;
use commands::store::RecordedEvent;
use domain::call::{CallEvent, Direction, EndReason, Party};
use domain::conference::ConferenceEvent;
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::runner::{Projection, ProjectionError};

#[path = "billing_conference.rs"]
mod conference;

pub struct Billing;

/// Tables of this projection, in the order they are dumped and compared.
pub const TABLES: &[&str] = &[
    "rm_cdrs",
    "rm_cdr_legs",
    "rm_charges",
    "rm_rating_tariff_versions",
    "rm_rating_assignments",
    "rm_balances",
    "rm_account_entries",
    "rm_reservations",
    "rm_report_hourly",
    "rm_report_destinations",
    "rm_live_calls",
    "rm_rating_conference_rooms",
    "rm_rating_conference_stays",
];

impl Projection for Billing {
    /// Registrations are the log's busiest events under load, and this projection has no
    /// use for them.
    fn skips_payloads(&self) -> &'static [&'static str] {
        <domain::registration::RegistrationEvent as domain::DomainEvent>::event_types()
    }

    fn name(&self) -> &'static str {
        "billing"
    }

    /// 2: legs carry the media counters of `CallEnded.media`; charges keep tariff corrections;
    /// conference legs are charged to the room owner. 3: conference legs count in the reports
    /// (direction `conference`). 4: the media node's counters of the caller's side are a leg
    /// of kind `caller`. 5: a call answered by a conference access number is not charged to
    /// the caller (the room owner pays per participant leg).
    fn version(&self) -> i32 {
        5
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let decoded = decode(events)?;
        let mut fold = Fold::load(conn, events, &decoded).await?;
        for (meta, item) in events.iter().zip(&decoded) {
            fold.apply(meta, item);
        }
        fold.write(conn).await?;
        Ok(())
    }
}

/// An event this projection reads, decoded once.
enum Item {
    Call(Uuid, CallEvent),
    Account(Uuid, AccountEvent),
    Tariff(TariffEvent),
    Conference(Uuid, ConferenceEvent),
    Other,
}

fn decode(events: &[RecordedEvent]) -> Result<Vec<Item>, ProjectionError> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let bad = |e: String| ProjectionError::Decode(event.event_id, e);
        let item = if let Some(id) = event.stream_id.strip_prefix("call-") {
            let call_id = id.parse::<Uuid>().map_err(|e| bad(e.to_string()))?;
            Item::Call(call_id, event.decode::<CallEvent>().map_err(|e| bad(e.to_string()))?)
        } else if let Some(id) = event.stream_id.strip_prefix("account-") {
            let account_id = id.parse::<Uuid>().map_err(|e| bad(e.to_string()))?;
            Item::Account(
                account_id,
                event.decode::<AccountEvent>().map_err(|e| bad(e.to_string()))?,
            )
        } else if let Some(id) = event.stream_id.strip_prefix("conference-") {
            let room_id = id.parse::<Uuid>().map_err(|e| bad(e.to_string()))?;
            Item::Conference(
                room_id,
                event.decode::<ConferenceEvent>().map_err(|e| bad(e.to_string()))?,
            )
        } else if event.stream_id.starts_with("tariff-") {
            Item::Tariff(event.decode::<TariffEvent>().map_err(|e| bad(e.to_string()))?)
        } else {
            Item::Other
        };
        out.push(item);
    }
    Ok(out)
}

/// `(tenant_id, id)`: every key carries the tenant, so one tenant's ids never reach another's rows.
type Key = (Uuid, Uuid);

/// Rows of a call by `(tenant_id, call_id)` pairs bound as `$1`, `$2`.
const KEYED: &str = "(tenant_id, call_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))";
/// Rows of an account by `(tenant_id, account_id)` pairs bound as `$1`, `$2`.
const ACCOUNT_KEYED: &str = "(tenant_id, account_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))";

#[derive(Debug, Clone)]
struct Cdr {
    direction: String,
    caller: String,
    caller_name: String,
    callee: String,
    callee_name: String,
    did: Option<String>,
    trunk_id: Option<Uuid>,
    account_id: Option<Uuid>,
    started_at: DateTime<Utc>,
    authorized_at: Option<DateTime<Utc>>,
    max_duration_s: Option<i32>,
    rejected_reason: Option<String>,
    ring_at: Option<DateTime<Utc>>,
    answer_at: Option<DateTime<Utc>>,
    answered_leg: Option<Uuid>,
    end_at: Option<DateTime<Utc>>,
    duration_s: Option<i32>,
    billed_s: Option<i32>,
    end_reason: Option<String>,
    hangup_by: Option<String>,
    sip_status: Option<i32>,
    holds: i32,
    transfers: i32,
    transferred_to: Option<String>,
    charge: Option<Decimal>,
    currency: Option<String>,
    last_position: i64,
    on_hold: bool,
}

#[derive(Debug, Clone)]
struct CdrLeg {
    kind: String,
    target: String,
    trunk_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    ring_at: Option<DateTime<Utc>>,
    answer_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    duration_s: Option<i32>,
    media: Option<LegMediaRow>,
}

/// What a media node counted on a leg (`domain::call::LegMedia`), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LegMediaRow {
    codec: String,
    packets_received: i64,
    packets_sent: i64,
    bytes_received: i64,
    bytes_sent: i64,
    packets_lost: i64,
    jitter_us: i64,
}

impl LegMediaRow {
    fn from_event(media: &domain::call::LegMedia) -> LegMediaRow {
        // Counters beyond i64 (9.2e18 packets) cannot occur; saturate rather than wrap.
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        LegMediaRow {
            codec: media.codec.clone(),
            packets_received: big(media.packets_received),
            packets_sent: big(media.packets_sent),
            bytes_received: big(media.bytes_received),
            bytes_sent: big(media.bytes_sent),
            packets_lost: big(media.packets_lost),
            jitter_us: big(media.jitter_us),
        }
    }

    fn from_row(row: &sqlx::postgres::PgRow) -> Option<LegMediaRow> {
        let codec: Option<String> = row.get("codec");
        Some(LegMediaRow {
            codec: codec?,
            packets_received: row.get::<Option<i64>, _>("packets_received").unwrap_or(0),
            packets_sent: row.get::<Option<i64>, _>("packets_sent").unwrap_or(0),
            bytes_received: row.get::<Option<i64>, _>("bytes_received").unwrap_or(0),
            bytes_sent: row.get::<Option<i64>, _>("bytes_sent").unwrap_or(0),
            packets_lost: row.get::<Option<i64>, _>("packets_lost").unwrap_or(0),
            jitter_us: row.get::<Option<i64>, _>("jitter_us").unwrap_or(0),
        })
    }
}

#[derive(Debug, Clone)]
struct ChargeRow {
    tenant_id: Uuid,
    call_id: Uuid,
    leg_id: Uuid,
    account_id: Uuid,
    answered_at: DateTime<Utc>,
    duration_s: i32,
    destination: String,
    status: &'static str,
    unrated_reason: Option<String>,
    tariff_id: Option<Uuid>,
    tariff_version: Option<i32>,
    /// The revision of `tariff_version` the charge was billed with.
    tariff_revision: Option<i32>,
    matched_prefix: Option<String>,
    billed_s: Option<i32>,
    currency: Option<String>,
    amount: Option<Decimal>,
    amount_exact: Option<Decimal>,
    explanation: Option<String>,
    position: i64,
    /// The charge re-rated under a later correction of its tariff version.
    correction: Option<Correction>,
    /// 'calls' or 'conferences'.
    service: &'static str,
}

impl ChargeRow {
    /// A leg to rate: its facts, and nothing rated yet.
    fn unrated(
        call: Key,
        leg_id: Uuid,
        account_id: Uuid,
        answered_at: DateTime<Utc>,
        duration_s: i32,
        destination: String,
        position: i64,
    ) -> ChargeRow {
        ChargeRow {
            tenant_id: call.0,
            call_id: call.1,
            leg_id,
            account_id,
            answered_at,
            duration_s,
            destination,
            status: "unrated",
            unrated_reason: None,
            tariff_id: None,
            tariff_version: None,
            tariff_revision: None,
            matched_prefix: None,
            billed_s: None,
            currency: None,
            amount: None,
            amount_exact: None,
            explanation: None,
            position,
            correction: None,
            service: "calls",
        }
    }
}

/// A charge as re-rated under a corrected tariff version; the billed amount stays beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Correction {
    revision: i32,
    billed_s: Option<i32>,
    amount: Option<Decimal>,
    amount_exact: Option<Decimal>,
    /// The corrected explanation, or why the corrected deck cannot rate the call.
    explanation: String,
}

#[derive(Debug, Clone)]
struct Balance {
    kind: String,
    credit_limit: Decimal,
    currency: String,
    billing_tz: String,
    payments: Decimal,
    adjustments: Decimal,
    settled_charges: Decimal,
    open_reservations: Decimal,
    balance: Decimal,
    opened_at: DateTime<Utc>,
    last_position: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    tenant_id: Uuid,
    account_id: Uuid,
    stream_version: i64,
    kind: &'static str,
    ref_id: Uuid,
    amount: Decimal,
    balance_after: Decimal,
    occurred_at: DateTime<Utc>,
    position: i64,
}

#[derive(Debug, Clone)]
struct Reservation {
    call_id: Uuid,
    amount: Decimal,
    max_duration_s: i32,
    status: &'static str,
    settled_amount: Option<Decimal>,
    reserved_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    calls: i64,
    answered: i64,
    duration_s: i64,
    billed_s: i64,
    cost: Decimal,
}

impl Traffic {
    fn add(&mut self, other: &Traffic) {
        self.calls += other.calls;
        self.answered += other.answered;
        self.duration_s += other.duration_s;
        self.billed_s += other.billed_s;
        self.cost += other.cost;
    }
}

#[derive(Debug, Clone)]
struct LiveCall {
    state: &'static str,
    caller: String,
    callee: String,
    direction: String,
    started_at: DateTime<Utc>,
    answer_at: Option<DateTime<Utc>>,
    on_hold: bool,
}

/// How a reservation made in an earlier batch closed: status, settled amount, when.
type Closing = (&'static str, Option<Decimal>, DateTime<Utc>);

/// The in-memory fold of one batch, seeded with the rows it touches from earlier batches.
#[derive(Default)]
struct Fold {
    cdrs: HashMap<Key, Cdr>,
    /// CDRs that existed before this batch (rewritten by delete + insert).
    cdrs_existing: HashSet<Key>,
    /// Touched CDRs in first-touch order, so statements write in a stable order.
    cdr_order: Vec<Key>,
    cdr_touched: HashSet<Key>,
    legs: BTreeMap<(Uuid, Uuid, Uuid), CdrLeg>,
    legs_of: HashMap<Key, Vec<Uuid>>,
    charges: Vec<ChargeRow>,
    balances: HashMap<Key, Balance>,
    balances_existing: HashSet<Key>,
    balance_order: Vec<Key>,
    entries: Vec<Entry>,
    reservations: BTreeMap<(Uuid, Uuid, Uuid), Reservation>,
    /// Reservations made in this batch (inserted); the others were loaded or are updated.
    reservations_new: HashSet<(Uuid, Uuid, Uuid)>,
    /// Reservation closings for reservations made in earlier batches.
    reservation_closings: BTreeMap<(Uuid, Uuid, Uuid), Closing>,
    assignments: HashMap<Key, Vec<TariffAssigned>>,
    new_assignments: Vec<(Uuid, Uuid, TariffAssigned)>,
    tariffs: HashMap<(Uuid, Uuid), Vec<Arc<CompiledTariff>>>,
    /// Corrections so far per `(tenant, tariff, version)`; absent means 0.
    revisions: HashMap<(Uuid, Uuid, u32), u32>,
    new_tariff_versions: Vec<(Uuid, TariffVersion)>,
    /// The latest correction of each version corrected in this batch, with its revision.
    corrected_versions: BTreeMap<(Uuid, Uuid, u32), (TariffVersion, u32)>,
    /// Charges of earlier batches rated with a version this batch corrects (updated in place).
    earlier_charges: BTreeMap<(Uuid, Uuid, Uuid), ChargeRow>,
    /// Rooms and running sessions, for charging participant legs to the room owner.
    conferences: conference::ConferenceFold,
    hourly: BTreeMap<(Uuid, DateTime<Utc>, String, Uuid, String), Traffic>,
    destinations: BTreeMap<(Uuid, chrono::NaiveDate, String, String), Traffic>,
    live: BTreeMap<Key, Option<LiveCall>>,
    /// Live rows written by earlier batches (only these need deleting).
    live_existing: HashSet<Key>,
}

impl Fold {
    async fn load(conn: &mut PgConnection, events: &[RecordedEvent], items: &[Item]) -> Result<Fold, ProjectionError> {
        let mut fold = Fold::default();
        // Which calls and accounts the batch touches, and which of them start in it.
        let mut call_keys: Vec<Key> = Vec::new();
        let mut started: HashSet<Key> = HashSet::new();
        let mut account_ids: HashSet<Key> = HashSet::new();
        let mut opened: HashSet<Key> = HashSet::new();
        let mut tariff_ids: HashSet<Key> = HashSet::new();
        let mut seen_calls: HashSet<Key> = HashSet::new();
        let mut corrected: Vec<(Uuid, Uuid, u32)> = Vec::new();
        for (meta, item) in events.iter().zip(items) {
            let tenant = meta.tenant_id;
            match item {
                Item::Call(call_id, event) => {
                    let key = (tenant, *call_id);
                    match event {
                        CallEvent::CallInitiated(e) => {
                            started.insert(key);
                            if let Some(account) = e.account_id {
                                account_ids.insert((tenant, account));
                            }
                        }
                        _ => {
                            if seen_calls.insert(key) && !started.contains(&key) {
                                call_keys.push(key);
                            }
                        }
                    }
                    seen_calls.insert(key);
                }
                Item::Account(account_id, event) => {
                    account_ids.insert((tenant, *account_id));
                    match event {
                        AccountEvent::Opened(_) => {
                            opened.insert((tenant, *account_id));
                        }
                        AccountEvent::TariffAssigned(a) => {
                            tariff_ids.insert((tenant, a.tariff_id));
                        }
                        _ => {}
                    }
                }
                Item::Tariff(TariffEvent::VersionCorrected(c)) => {
                    tariff_ids.insert((tenant, c.version.tariff_id));
                    corrected.push((tenant, c.version.tariff_id, c.version.version));
                }
                Item::Tariff(_) | Item::Conference(..) | Item::Other => {}
            }
        }
        fold.load_conferences(conn, events, items, &mut account_ids).await?;
        // Charges of earlier batches that a correction in this batch re-rates, and their
        // accounts (for the billing time zone).
        if !corrected.is_empty() {
            let rows = sqlx::query(
                "SELECT tenant_id, call_id, leg_id, account_id, answered_at, duration_s, destination, tariff_id, \
                 tariff_version, position FROM rm_charges \
                 WHERE (tenant_id, tariff_id, tariff_version) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int[]))",
            )
            .bind(corrected.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(corrected.iter().map(|c| c.1).collect::<Vec<_>>())
            .bind(
                corrected
                    .iter()
                    .map(|c| i32::try_from(c.2).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                // Only the leg's facts and the version are read: a re-rating updates the
                // correction columns alone.
                let mut charge = ChargeRow::unrated(
                    (row.get("tenant_id"), row.get("call_id")),
                    row.get("leg_id"),
                    row.get("account_id"),
                    row.get("answered_at"),
                    row.get("duration_s"),
                    row.get("destination"),
                    row.get("position"),
                );
                charge.tariff_id = row.get("tariff_id");
                charge.tariff_version = row.get("tariff_version");
                account_ids.insert((charge.tenant_id, charge.account_id));
                fold.earlier_charges
                    .insert((charge.tenant_id, charge.call_id, charge.leg_id), charge);
            }
        }
        // Calls continued from earlier batches: their CDR, legs and live row.
        let call_tenants: Vec<Uuid> = call_keys.iter().map(|k| k.0).collect();
        let earlier_calls: Vec<Uuid> = call_keys.iter().map(|k| k.1).collect();
        if !earlier_calls.is_empty() {
            let rows = sqlx::query(&format!("SELECT * FROM rm_cdrs WHERE {KEYED}"))
                .bind(&call_tenants)
                .bind(&earlier_calls)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let key: Key = (row.get("tenant_id"), row.get("call_id"));
                let cdr = Cdr {
                    direction: row.get("direction"),
                    caller: row.get("caller"),
                    caller_name: row.get("caller_name"),
                    callee: row.get("callee"),
                    callee_name: row.get("callee_name"),
                    did: row.get("did"),
                    trunk_id: row.get("trunk_id"),
                    account_id: row.get("account_id"),
                    started_at: row.get("started_at"),
                    authorized_at: row.get("authorized_at"),
                    max_duration_s: row.get("max_duration_s"),
                    rejected_reason: row.get("rejected_reason"),
                    ring_at: row.get("ring_at"),
                    answer_at: row.get("answer_at"),
                    answered_leg: row.get("answered_leg"),
                    end_at: row.get("end_at"),
                    duration_s: row.get("duration_s"),
                    billed_s: row.get("billed_s"),
                    end_reason: row.get("end_reason"),
                    hangup_by: row.get("hangup_by"),
                    sip_status: row.get("sip_status"),
                    holds: row.get("holds"),
                    transfers: row.get("transfers"),
                    transferred_to: row.get("transferred_to"),
                    charge: row.get("charge"),
                    currency: row.get("currency"),
                    last_position: row.get("last_position"),
                    on_hold: false,
                };
                if let Some(account) = cdr.account_id {
                    account_ids.insert((key.0, account));
                }
                fold.cdrs_existing.insert(key);
                fold.cdrs.insert(key, cdr);
            }
            let rows = sqlx::query(&format!(
                "SELECT * FROM rm_cdr_legs WHERE {KEYED} ORDER BY tenant_id, call_id, leg_id"
            ))
            .bind(&call_tenants)
            .bind(&earlier_calls)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                let (tenant, call, leg): (Uuid, Uuid, Uuid) =
                    (row.get("tenant_id"), row.get("call_id"), row.get("leg_id"));
                fold.legs_of.entry((tenant, call)).or_default().push(leg);
                fold.legs.insert(
                    (tenant, call, leg),
                    CdrLeg {
                        kind: row.get("kind"),
                        target: row.get("target"),
                        trunk_id: row.get("trunk_id"),
                        created_at: row.get("created_at"),
                        ring_at: row.get("ring_at"),
                        answer_at: row.get("answer_at"),
                        end_at: row.get("end_at"),
                        duration_s: row.get("duration_s"),
                        media: LegMediaRow::from_row(&row),
                    },
                );
            }
            let rows = sqlx::query(&format!("SELECT * FROM rm_live_calls WHERE {KEYED}"))
                .bind(&call_tenants)
                .bind(&earlier_calls)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let key: Key = (row.get("tenant_id"), row.get("call_id"));
                let on_hold: bool = row.get("on_hold");
                if let Some(cdr) = fold.cdrs.get_mut(&key) {
                    cdr.on_hold = on_hold;
                }
                fold.live_existing.insert(key);
                fold.live.insert(
                    key,
                    Some(LiveCall {
                        state: live_state(row.get::<String, _>("state").as_str()),
                        caller: row.get("caller"),
                        callee: row.get("callee"),
                        direction: row.get("direction"),
                        started_at: row.get("started_at"),
                        answer_at: row.get("answer_at"),
                        on_hold,
                    }),
                );
            }
        }
        // Accounts: balances (and billing time zones) and tariff assignments.
        let accounts: Vec<Key> = account_ids.iter().filter(|a| !opened.contains(a)).copied().collect();
        if !accounts.is_empty() {
            let account_tenants: Vec<Uuid> = accounts.iter().map(|k| k.0).collect();
            let accounts: Vec<Uuid> = accounts.iter().map(|k| k.1).collect();
            let rows = sqlx::query(&format!("SELECT * FROM rm_balances WHERE {ACCOUNT_KEYED}"))
                .bind(&account_tenants)
                .bind(&accounts)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let key: Key = (row.get("tenant_id"), row.get("account_id"));
                fold.balances_existing.insert(key);
                fold.balances.insert(
                    key,
                    Balance {
                        kind: row.get("kind"),
                        credit_limit: row.get("credit_limit"),
                        currency: row.get("currency"),
                        billing_tz: row.get("billing_tz"),
                        payments: row.get("payments"),
                        adjustments: row.get("adjustments"),
                        settled_charges: row.get("settled_charges"),
                        open_reservations: row.get("open_reservations"),
                        balance: row.get("balance"),
                        opened_at: row.get("opened_at"),
                        last_position: row.get("last_position"),
                    },
                );
            }
            let rows = sqlx::query(&format!(
                "SELECT tenant_id, account_id, effective_from, tariff_id FROM rm_rating_assignments \
                 WHERE {ACCOUNT_KEYED} ORDER BY tenant_id, account_id, effective_from"
            ))
            .bind(&account_tenants)
            .bind(&accounts)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                let tariff_id: Uuid = row.get("tariff_id");
                tariff_ids.insert((row.get("tenant_id"), tariff_id));
                fold.assignments
                    .entry((row.get("tenant_id"), row.get("account_id")))
                    .or_default()
                    .push(TariffAssigned {
                        tariff_id,
                        effective_from: row.get("effective_from"),
                    });
            }
        }
        if !tariff_ids.is_empty() {
            let tenants: Vec<Uuid> = tariff_ids.iter().map(|k| k.0).collect();
            let ids: Vec<Uuid> = tariff_ids.iter().map(|k| k.1).collect();
            let rows = sqlx::query(
                "SELECT tenant_id, tariff_id, version, revision, body FROM rm_rating_tariff_versions \
                 WHERE (tenant_id, tariff_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[])) \
                 ORDER BY tenant_id, tariff_id, version",
            )
            .bind(&tenants)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                let body: serde_json::Value = row.get("body");
                let version: TariffVersion = serde_json::from_value(body).map_err(|e| {
                    ProjectionError::Decode(row.get("tariff_id"), format!("stored tariff version: {e}"))
                })?;
                let key: Key = (row.get("tenant_id"), row.get("tariff_id"));
                let revision: i32 = row.get("revision");
                if revision > 0 {
                    let number = u32::try_from(row.get::<i32, _>("version")).unwrap_or(0);
                    fold.revisions
                        .insert((key.0, key.1, number), u32::try_from(revision).unwrap_or(0));
                }
                fold.tariffs
                    .entry(key)
                    .or_default()
                    .push(Arc::new(CompiledTariff::new(version)));
            }
        }
        Ok(fold)
    }

    fn apply(&mut self, meta: &RecordedEvent, item: &Item) {
        match item {
            Item::Call(call_id, event) => self.apply_call(meta, (meta.tenant_id, *call_id), event),
            Item::Account(account_id, event) => self.apply_account(meta, (meta.tenant_id, *account_id), event),
            Item::Tariff(TariffEvent::VersionPublished(published)) => {
                let version = published.version.clone();
                self.tariffs
                    .entry((meta.tenant_id, version.tariff_id))
                    .or_default()
                    .push(Arc::new(CompiledTariff::new(version.clone())));
                self.new_tariff_versions.push((meta.tenant_id, version));
            }
            Item::Tariff(TariffEvent::VersionCorrected(corrected)) => self.correct_tariff(meta.tenant_id, corrected),
            Item::Conference(room, event) => self.apply_conference(meta, *room, event),
            Item::Tariff(TariffEvent::Created(_)) | Item::Other => {}
        }
    }

    /// A tariff version corrected: later charges rate with the corrected deck, and every
    /// charge billed with the version so far is re-rated beside its billed amount.
    fn correct_tariff(&mut self, tenant: Uuid, corrected: &TariffVersionCorrected) {
        let version = &corrected.version;
        let compiled = Arc::new(CompiledTariff::new(version.clone()));
        // Versions are numbered from 1 in publication order; the loaded list holds them all.
        let index = version.version.checked_sub(1).map(|i| i as usize);
        let versions = self.tariffs.entry((tenant, version.tariff_id)).or_default();
        match index {
            Some(i) if i < versions.len() => versions[i] = compiled.clone(),
            // The store validated the correction against the tariff's stream, so the version
            // was published; without it here there is nothing rated with it to re-rate.
            _ => return,
        }
        let key = (tenant, version.tariff_id, version.version);
        self.revisions.insert(key, corrected.revision);
        self.corrected_versions
            .insert(key, (version.clone(), corrected.revision));
        let number = i32::try_from(version.version).unwrap_or(i32::MAX);
        let revision = i32::try_from(corrected.revision).unwrap_or(i32::MAX);
        let affected = |row: &ChargeRow| {
            row.tenant_id == tenant && row.tariff_id == Some(version.tariff_id) && row.tariff_version == Some(number)
        };
        let mut earlier = std::mem::take(&mut self.earlier_charges);
        for row in earlier.values_mut().filter(|r| affected(r)) {
            row.correction = Some(self.rerate(row, &compiled, revision));
        }
        self.earlier_charges = earlier;
        let mut current = std::mem::take(&mut self.charges);
        for row in current.iter_mut().filter(|r| affected(r)) {
            row.correction = Some(self.rerate(row, &compiled, revision));
        }
        self.charges = current;
    }

    /// A charge's leg rated again under a corrected version.
    fn rerate(&self, row: &ChargeRow, tariff: &CompiledTariff, revision: i32) -> Correction {
        let mut correction = Correction {
            revision,
            billed_s: None,
            amount: None,
            amount_exact: None,
            explanation: String::new(),
        };
        let tz: Option<Tz> = self
            .balances
            .get(&(row.tenant_id, row.account_id))
            .and_then(|b| b.billing_tz.parse().ok());
        let Some(tz) = tz else {
            correction.explanation = "the account's billing time zone is unknown".to_string();
            return correction;
        };
        let leg = Leg {
            destination: &row.destination,
            answered_at: row.answered_at,
            duration_s: u32::try_from(row.duration_s).unwrap_or(0),
        };
        match rating::rate_leg(tariff, &leg, tz) {
            Ok(charge) => {
                correction.billed_s = Some(i32::try_from(charge.billed_s).unwrap_or(i32::MAX));
                correction.amount = Some(charge.amount);
                correction.amount_exact = Some(charge.explanation.amount_exact);
                correction.explanation = format!("correction {revision}: {}", charge.explanation.render());
            }
            Err(e) => correction.explanation = e.to_string(),
        }
        correction
    }

    fn touch_cdr(&mut self, key: Key) {
        if self.cdr_touched.insert(key) {
            self.cdr_order.push(key);
        }
    }

    fn apply_call(&mut self, meta: &RecordedEvent, key: Key, event: &CallEvent) {
        if let CallEvent::CallInitiated(e) = event {
            let direction = direction_name(e.direction).to_string();
            self.cdrs.insert(
                key,
                Cdr {
                    direction: direction.clone(),
                    caller: e.caller.clone(),
                    caller_name: e.caller_name.clone(),
                    callee: e.callee.clone(),
                    // Call events carry no callee name yet; the SIP issue adds it.
                    callee_name: String::new(),
                    did: e.did.clone(),
                    trunk_id: e.trunk_id,
                    account_id: e.account_id,
                    started_at: e.at,
                    authorized_at: None,
                    max_duration_s: None,
                    rejected_reason: None,
                    ring_at: None,
                    answer_at: None,
                    answered_leg: None,
                    end_at: None,
                    duration_s: None,
                    billed_s: None,
                    end_reason: None,
                    hangup_by: None,
                    sip_status: None,
                    holds: 0,
                    transfers: 0,
                    transferred_to: None,
                    charge: None,
                    currency: None,
                    last_position: meta.global_position,
                    on_hold: false,
                },
            );
            self.touch_cdr(key);
            self.live.insert(
                key,
                Some(LiveCall {
                    state: "initiated",
                    caller: e.caller.clone(),
                    callee: e.callee.clone(),
                    direction,
                    started_at: e.at,
                    answer_at: None,
                    on_hold: false,
                }),
            );
            return;
        }
        // A call event without its CDR means the log lost the start: the store's version
        // checks make that impossible, so skip rather than invent a record.
        if !self.cdrs.contains_key(&key) {
            return;
        }
        self.touch_cdr(key);
        let mut ended = false;
        {
            let cdr = self.cdrs.get_mut(&key).expect("checked above");
            cdr.last_position = meta.global_position;
            match event {
                CallEvent::CallInitiated(_) => {}
                CallEvent::CallAuthorized(e) => {
                    cdr.authorized_at = Some(e.at);
                    cdr.max_duration_s = e.max_duration_s.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
                }
                CallEvent::CallRejected(e) => {
                    cdr.rejected_reason = Some(e.reason.clone());
                    cdr.end_at = Some(e.at);
                    cdr.sip_status = Some(i32::from(e.sip_status));
                    cdr.end_reason = Some(end_reason_name(EndReason::Rejected).to_string());
                    cdr.hangup_by = Some("system".to_string());
                    ended = true;
                }
                CallEvent::LegCreated(e) => {
                    self.legs.insert(
                        (key.0, key.1, e.leg_id),
                        CdrLeg {
                            kind: "call".to_string(),
                            target: e.target.clone(),
                            trunk_id: e.trunk_id,
                            created_at: e.at,
                            ring_at: None,
                            answer_at: None,
                            end_at: None,
                            duration_s: None,
                            media: None,
                        },
                    );
                    self.legs_of.entry(key).or_default().push(e.leg_id);
                }
                CallEvent::CallRinging(e) => {
                    cdr.ring_at.get_or_insert(e.at);
                    if let Some(leg) = self.legs.get_mut(&(key.0, key.1, e.leg_id)) {
                        leg.ring_at.get_or_insert(e.at);
                    }
                }
                CallEvent::CallAnswered(e) => {
                    cdr.answer_at = Some(e.at);
                    cdr.answered_leg = Some(e.leg_id);
                    if let Some(leg) = self.legs.get_mut(&(key.0, key.1, e.leg_id)) {
                        leg.answer_at = Some(e.at);
                    }
                }
                CallEvent::CallHeld(_) => {
                    cdr.holds += 1;
                    cdr.on_hold = true;
                }
                CallEvent::CallResumed(_) => cdr.on_hold = false,
                // A request only: the SIP node's `CallEnded` that follows is what ends the CDR.
                CallEvent::CallHangupRequested(_) => {}
                CallEvent::CallTransferred(e) => {
                    cdr.transfers += 1;
                    cdr.transferred_to = Some(e.to.clone());
                }
                CallEvent::CallEnded(e) => {
                    cdr.end_at = Some(e.at);
                    cdr.end_reason = Some(end_reason_name(e.reason).to_string());
                    cdr.hangup_by = Some(party_name(e.hangup_by).to_string());
                    cdr.sip_status = Some(i32::from(e.sip_status));
                    cdr.on_hold = false;
                    if let Some(answer_at) = cdr.answer_at {
                        cdr.duration_s = Some(whole_seconds(e.at - answer_at));
                    } else {
                        cdr.duration_s = Some(0);
                    }
                    if let Some(legs) = self.legs_of.get(&key) {
                        for leg_id in legs {
                            if let Some(leg) = self.legs.get_mut(&(key.0, key.1, *leg_id)) {
                                leg.end_at.get_or_insert(e.at);
                                if let Some(answer_at) = leg.answer_at {
                                    leg.duration_s = Some(whole_seconds(e.at - answer_at));
                                }
                            }
                        }
                    }
                    for media in &e.media {
                        match self.legs.get_mut(&(key.0, key.1, media.leg_id)) {
                            Some(leg) => leg.media = Some(LegMediaRow::from_event(media)),
                            None => {
                                // The caller's side, which no `LegCreated` names: a leg of
                                // kind `caller` so the CDR shows what it sent and received.
                                self.legs.insert(
                                    (key.0, key.1, media.leg_id),
                                    CdrLeg {
                                        kind: "caller".to_string(),
                                        target: cdr.caller.clone(),
                                        trunk_id: None,
                                        created_at: cdr.started_at,
                                        ring_at: None,
                                        answer_at: cdr.answer_at,
                                        end_at: Some(e.at),
                                        duration_s: cdr.duration_s,
                                        media: Some(LegMediaRow::from_event(media)),
                                    },
                                );
                                self.legs_of.entry(key).or_default().push(media.leg_id);
                            }
                        }
                    }
                    ended = true;
                }
            }
        }
        if ended {
            self.close_call(meta, key);
            self.live.insert(key, None);
        } else {
            let cdr = &self.cdrs[&key];
            let state = if cdr.answer_at.is_some() {
                if cdr.on_hold {
                    "on_hold"
                } else {
                    "answered"
                }
            } else if cdr.ring_at.is_some() {
                "ringing"
            } else if cdr.authorized_at.is_some() {
                "authorized"
            } else {
                "initiated"
            };
            self.live.insert(
                key,
                Some(LiveCall {
                    state,
                    caller: cdr.caller.clone(),
                    callee: cdr.callee.clone(),
                    direction: cdr.direction.clone(),
                    started_at: cdr.started_at,
                    answer_at: cdr.answer_at,
                    on_hold: cdr.on_hold,
                }),
            );
        }
    }

    /// A call is over: rate its answered leg and count it in the reports.
    fn close_call(&mut self, meta: &RecordedEvent, key: Key) {
        let cdr = self.cdrs[&key].clone();
        let mut charge_row = None;
        // A call answered by a conference (the media node's IVR at an access number) is not
        // the caller's to pay: the room owner is charged for each participant's leg.
        let to_conference = cdr
            .answered_leg
            .and_then(|leg| self.legs.get(&(key.0, key.1, leg)))
            .is_some_and(|leg| leg.target.starts_with("conference:"));
        if let (false, Some(account_id), Some(answered_at), Some(leg_id), Some(duration_s)) = (
            to_conference,
            cdr.account_id,
            cdr.answer_at,
            cdr.answered_leg,
            cdr.duration_s,
        ) {
            let destination = match cdr.direction.as_str() {
                // An inbound call is rated at the number dialled, as a conference is at its
                // access number.
                "inbound" => cdr.did.clone().unwrap_or_else(|| cdr.callee.clone()),
                _ => cdr.callee.clone(),
            };
            charge_row = Some(self.rate(meta, key, account_id, leg_id, answered_at, duration_s, destination));
        }
        let (cost, currency, billed_s, prefix) = match &charge_row {
            Some(row) => (
                row.amount.unwrap_or_default(),
                row.currency.clone().unwrap_or_default(),
                row.billed_s.unwrap_or(0),
                row.matched_prefix.clone().unwrap_or_else(|| "unrated".to_string()),
            ),
            None => (Decimal::ZERO, String::new(), 0, String::new()),
        };
        {
            let cdr = self.cdrs.get_mut(&key).expect("the call exists");
            if let Some(row) = &charge_row {
                cdr.charge = row.amount;
                cdr.currency = row.currency.clone();
                cdr.billed_s = row.billed_s;
            }
        }
        self.count_traffic(
            key.0,
            Traffic {
                calls: 1,
                answered: i64::from(cdr.answer_at.is_some()),
                duration_s: i64::from(cdr.duration_s.unwrap_or(0)),
                billed_s: i64::from(billed_s),
                cost,
            },
            cdr.started_at,
            &cdr.direction,
            cdr.trunk_id.unwrap_or_default(),
            &currency,
            charge_row.is_some().then_some(prefix.as_str()),
        );
        if let Some(row) = charge_row {
            self.charges.push(row);
        }
    }

    /// Count one call (or conference leg) into the reports: per hour by direction, trunk
    /// and currency, and per day by the matched destination prefix when it was rated.
    #[allow(clippy::too_many_arguments)]
    fn count_traffic(
        &mut self,
        tenant: Uuid,
        traffic: Traffic,
        started_at: DateTime<Utc>,
        direction: &str,
        trunk: Uuid,
        currency: &str,
        rated_prefix: Option<&str>,
    ) {
        let hour = started_at.duration_trunc(TimeDelta::hours(1)).unwrap_or(started_at);
        let slot = self
            .hourly
            .entry((tenant, hour, direction.to_string(), trunk, currency.to_string()))
            .or_default();
        slot.add(&traffic);
        if let Some(prefix) = rated_prefix {
            let slot = self
                .destinations
                .entry((
                    tenant,
                    started_at.date_naive(),
                    prefix.to_string(),
                    currency.to_string(),
                ))
                .or_default();
            slot.add(&Traffic { billed_s: 0, ..traffic });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rate(
        &self,
        meta: &RecordedEvent,
        key: Key,
        account_id: Uuid,
        leg_id: Uuid,
        answered_at: DateTime<Utc>,
        duration_s: i32,
        destination: String,
    ) -> ChargeRow {
        let mut row = ChargeRow::unrated(
            key,
            leg_id,
            account_id,
            answered_at,
            duration_s,
            destination,
            meta.global_position,
        );
        let account_key = (key.0, account_id);
        let Some(balance) = self.balances.get(&account_key) else {
            row.unrated_reason = Some("the account is not open".to_string());
            return row;
        };
        let tz: Tz = match balance.billing_tz.parse() {
            Ok(tz) => tz,
            Err(_) => {
                row.unrated_reason = Some(format!("unknown billing time zone {}", balance.billing_tz));
                return row;
            }
        };
        let assignments = self
            .assignments
            .get(&account_key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(tariff_id) = account::tariff_in_force(assignments, answered_at) else {
            row.unrated_reason = Some("no tariff assigned at the answer time".to_string());
            return row;
        };
        row.tariff_id = Some(tariff_id);
        let versions = self
            .tariffs
            .get(&(key.0, tariff_id))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let count = versions.partition_point(|v| v.version.effective_from <= answered_at);
        let Some(tariff) = count.checked_sub(1).map(|i| &versions[i]) else {
            row.unrated_reason = Some("no tariff version in force at the answer time".to_string());
            return row;
        };
        row.tariff_version = Some(i32::try_from(tariff.version.version).unwrap_or(i32::MAX));
        let revision = self
            .revisions
            .get(&(key.0, tariff_id, tariff.version.version))
            .copied()
            .unwrap_or(0);
        row.tariff_revision = Some(i32::try_from(revision).unwrap_or(i32::MAX));
        row.currency = Some(tariff.version.currency.clone());
        let leg = Leg {
            destination: &row.destination,
            answered_at,
            duration_s: u32::try_from(duration_s).unwrap_or(0),
        };
        match rating::rate_leg(tariff, &leg, tz) {
            Ok(charge) => {
                row.status = "rated";
                row.matched_prefix = Some(charge.explanation.matched_prefix.to_string());
                row.billed_s = Some(i32::try_from(charge.billed_s).unwrap_or(i32::MAX));
                row.amount = Some(charge.amount);
                row.amount_exact = Some(charge.explanation.amount_exact);
                row.explanation = Some(charge.explanation.render());
            }
            Err(e) => row.unrated_reason = Some(e.to_string()),
        }
        row
    }

    fn apply_account(&mut self, meta: &RecordedEvent, key: Key, event: &AccountEvent) {
        if let AccountEvent::Opened(e) = event {
            let (kind, credit_limit) = match e.kind {
                AccountKind::Prepaid => ("prepaid", Decimal::ZERO),
                AccountKind::Postpaid { credit_limit } => ("postpaid", credit_limit),
            };
            self.balances.insert(
                key,
                Balance {
                    kind: kind.to_string(),
                    credit_limit,
                    currency: e.currency.clone(),
                    billing_tz: e.billing_tz.name().to_string(),
                    payments: Decimal::ZERO,
                    adjustments: Decimal::ZERO,
                    settled_charges: Decimal::ZERO,
                    open_reservations: Decimal::ZERO,
                    balance: Decimal::ZERO,
                    opened_at: meta.occurred_at,
                    last_position: meta.global_position,
                },
            );
            self.balance_order.push(key);
            return;
        }
        let Some(balance) = self.balances.get_mut(&key) else {
            return;
        };
        if !self.balance_order.contains(&key) {
            self.balance_order.push(key);
        }
        balance.last_position = meta.global_position;
        let entry = |kind: &'static str, ref_id: Uuid, amount: Decimal, balance_after: Decimal| Entry {
            tenant_id: key.0,
            account_id: key.1,
            stream_version: meta.stream_version,
            kind,
            ref_id,
            amount,
            balance_after,
            occurred_at: meta.occurred_at,
            position: meta.global_position,
        };
        match event {
            AccountEvent::Opened(_) => {}
            AccountEvent::ToppedUp(e) => {
                balance.payments += e.amount;
                balance.balance += e.amount;
                let row = entry("payment", e.payment_id, e.amount, balance.balance);
                self.entries.push(row);
            }
            AccountEvent::Adjusted(e) => {
                balance.adjustments += e.amount;
                balance.balance += e.amount;
                let row = entry("adjustment", e.adjustment_id, e.amount, balance.balance);
                self.entries.push(row);
            }
            AccountEvent::Reserved(e) => {
                balance.open_reservations += e.amount;
                let id = (key.0, key.1, e.reservation_id);
                self.reservations.insert(
                    id,
                    Reservation {
                        call_id: e.call_id,
                        amount: e.amount,
                        max_duration_s: i32::try_from(e.max_duration.actual_s).unwrap_or(i32::MAX),
                        status: "open",
                        settled_amount: None,
                        reserved_at: meta.occurred_at,
                        closed_at: None,
                    },
                );
                self.reservations_new.insert(id);
            }
            AccountEvent::Released(e) => {
                balance.open_reservations -= e.amount;
                self.close_reservation((key.0, key.1, e.reservation_id), "released", None, meta.occurred_at);
            }
            AccountEvent::Settled(e) => {
                balance.open_reservations -= e.released;
                balance.settled_charges += e.amount;
                balance.balance -= e.amount;
                let row = entry("charge", e.charge_id, -e.amount, balance.balance);
                self.entries.push(row);
                if let Some(reservation_id) = e.reservation_id {
                    self.close_reservation(
                        (key.0, key.1, reservation_id),
                        "settled",
                        Some(e.amount),
                        meta.occurred_at,
                    );
                }
            }
            AccountEvent::TariffAssigned(e) => {
                self.assignments.entry(key).or_default().push(e.clone());
                self.new_assignments.push((key.0, key.1, e.clone()));
            }
        }
    }

    fn close_reservation(
        &mut self,
        id: (Uuid, Uuid, Uuid),
        status: &'static str,
        settled: Option<Decimal>,
        at: DateTime<Utc>,
    ) {
        match self.reservations.get_mut(&id) {
            Some(reservation) => {
                reservation.status = status;
                reservation.settled_amount = settled;
                reservation.closed_at = Some(at);
            }
            None => {
                self.reservation_closings.insert(id, (status, settled, at));
            }
        }
    }

    async fn write(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.write_cdrs(conn).await?;
        self.write_charges(conn).await?;
        self.write_conferences(conn).await?;
        self.write_accounts(conn).await?;
        self.write_reports(conn).await?;
        self.write_live(conn).await?;
        Ok(())
    }

    async fn write_cdrs(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.cdr_order.is_empty() {
            return Ok(());
        }
        let existing: Vec<Key> = self
            .cdr_order
            .iter()
            .filter(|k| self.cdrs_existing.contains(k))
            .copied()
            .collect();
        if !existing.is_empty() {
            let tenants: Vec<Uuid> = existing.iter().map(|k| k.0).collect();
            let calls: Vec<Uuid> = existing.iter().map(|k| k.1).collect();
            for table in ["rm_cdrs", "rm_cdr_legs"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE {KEYED}"))
                    .bind(&tenants)
                    .bind(&calls)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let n = self.cdr_order.len();
        let mut c = CdrColumns::with_capacity(n);
        for key in &self.cdr_order {
            c.push(*key, &self.cdrs[key]);
        }
        sqlx::query(
            "INSERT INTO rm_cdrs (tenant_id, call_id, direction, caller, caller_name, callee, callee_name, did, \
             trunk_id, account_id, started_at, authorized_at, max_duration_s, rejected_reason, ring_at, answer_at, \
             answered_leg, end_at, duration_s, billed_s, end_reason, hangup_by, sip_status, holds, transfers, \
             transferred_to, charge, currency, last_position) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::uuid[], $10::uuid[], $11::timestamptz[], $12::timestamptz[], $13::int[], $14::text[], \
             $15::timestamptz[], $16::timestamptz[], $17::uuid[], $18::timestamptz[], $19::int[], $20::int[], \
             $21::text[], $22::text[], $23::int[], $24::int[], $25::int[], $26::text[], $27::numeric[], $28::text[], \
             $29::bigint[])",
        )
        .bind(&c.tenant_id)
        .bind(&c.call_id)
        .bind(&c.direction)
        .bind(&c.caller)
        .bind(&c.caller_name)
        .bind(&c.callee)
        .bind(&c.callee_name)
        .bind(&c.did)
        .bind(&c.trunk_id)
        .bind(&c.account_id)
        .bind(&c.started_at)
        .bind(&c.authorized_at)
        .bind(&c.max_duration_s)
        .bind(&c.rejected_reason)
        .bind(&c.ring_at)
        .bind(&c.answer_at)
        .bind(&c.answered_leg)
        .bind(&c.end_at)
        .bind(&c.duration_s)
        .bind(&c.billed_s)
        .bind(&c.end_reason)
        .bind(&c.hangup_by)
        .bind(&c.sip_status)
        .bind(&c.holds)
        .bind(&c.transfers)
        .bind(&c.transferred_to)
        .bind(&c.charge)
        .bind(&c.currency)
        .bind(&c.last_position)
        .execute(&mut *conn)
        .await?;
        // Legs of every touched call, rewritten whole.
        let mut tenant_id = Vec::new();
        let mut call_id = Vec::new();
        let mut leg_id = Vec::new();
        let mut kind = Vec::new();
        let mut target = Vec::new();
        let mut trunk_id = Vec::new();
        let mut created_at = Vec::new();
        let mut ring_at = Vec::new();
        let mut answer_at = Vec::new();
        let mut end_at = Vec::new();
        let mut duration_s = Vec::new();
        let mut media = MediaColumns::default();
        for key in &self.cdr_order {
            for id in self.legs_of.get(key).map(Vec::as_slice).unwrap_or_default() {
                let leg = &self.legs[&(key.0, key.1, *id)];
                tenant_id.push(key.0);
                call_id.push(key.1);
                leg_id.push(*id);
                kind.push(leg.kind.clone());
                target.push(leg.target.clone());
                trunk_id.push(leg.trunk_id);
                created_at.push(leg.created_at);
                ring_at.push(leg.ring_at);
                answer_at.push(leg.answer_at);
                end_at.push(leg.end_at);
                duration_s.push(leg.duration_s);
                media.push(leg.media.as_ref());
            }
        }
        if !tenant_id.is_empty() {
            sqlx::query(
                "INSERT INTO rm_cdr_legs (tenant_id, call_id, leg_id, kind, target, trunk_id, created_at, ring_at, \
                 answer_at, end_at, duration_s, codec, packets_received, packets_sent, bytes_received, bytes_sent, \
                 packets_lost, jitter_us) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::uuid[], \
                 $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::int[], \
                 $12::text[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[])",
            )
            .bind(&tenant_id)
            .bind(&call_id)
            .bind(&leg_id)
            .bind(&kind)
            .bind(&target)
            .bind(&trunk_id)
            .bind(&created_at)
            .bind(&ring_at)
            .bind(&answer_at)
            .bind(&end_at)
            .bind(&duration_s)
            .bind(&media.codec)
            .bind(&media.counters[0])
            .bind(&media.counters[1])
            .bind(&media.counters[2])
            .bind(&media.counters[3])
            .bind(&media.counters[4])
            .bind(&media.counters[5])
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn write_charges(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.charges.is_empty() {
            let rows = &self.charges;
            let corrections = CorrectionColumns::of(rows.iter());
            sqlx::query(
                "INSERT INTO rm_charges (tenant_id, call_id, leg_id, account_id, answered_at, duration_s, destination, \
                 status, unrated_reason, tariff_id, tariff_version, matched_prefix, billed_s, currency, amount, \
                 amount_exact, explanation, position, tariff_revision, corrected_revision, corrected_billed_s, \
                 corrected_amount, corrected_amount_exact, corrected_explanation, service) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::int[], \
                 $7::text[], $8::text[], $9::text[], $10::uuid[], $11::int[], $12::text[], $13::int[], $14::text[], \
                 $15::numeric[], $16::numeric[], $17::text[], $18::bigint[], $19::int[], $20::int[], $21::int[], \
                 $22::numeric[], $23::numeric[], $24::text[], $25::text[])",
            )
            .bind(rows.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.call_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.leg_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.answered_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.duration_s).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.destination.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.status.to_string()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.unrated_reason.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tariff_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tariff_version).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.matched_prefix.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.billed_s).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.amount_exact).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.explanation.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.position).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tariff_revision).collect::<Vec<_>>())
            .bind(corrections.revision)
            .bind(corrections.billed_s)
            .bind(corrections.amount)
            .bind(corrections.amount_exact)
            .bind(corrections.explanation)
            .bind(rows.iter().map(|r| r.service.to_string()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let rerated: Vec<&ChargeRow> = self
            .earlier_charges
            .values()
            .filter(|r| r.correction.is_some())
            .collect();
        if !rerated.is_empty() {
            let c = CorrectionColumns::of(rerated.iter().copied());
            sqlx::query(
                "UPDATE rm_charges c SET corrected_revision = u.revision, corrected_billed_s = u.billed_s, \
                 corrected_amount = u.amount, corrected_amount_exact = u.amount_exact, \
                 corrected_explanation = u.explanation \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::int[], $6::numeric[], $7::numeric[], \
                 $8::text[]) AS u(tenant_id, call_id, leg_id, revision, billed_s, amount, amount_exact, explanation) \
                 WHERE (c.tenant_id, c.call_id, c.leg_id) = (u.tenant_id, u.call_id, u.leg_id)",
            )
            .bind(rerated.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
            .bind(rerated.iter().map(|r| r.call_id).collect::<Vec<_>>())
            .bind(rerated.iter().map(|r| r.leg_id).collect::<Vec<_>>())
            .bind(c.revision)
            .bind(c.billed_s)
            .bind(c.amount)
            .bind(c.amount_exact)
            .bind(c.explanation)
            .execute(&mut *conn)
            .await?;
        }
        if !self.new_tariff_versions.is_empty() {
            let rows = &self.new_tariff_versions;
            sqlx::query(
                "INSERT INTO rm_rating_tariff_versions (tenant_id, tariff_id, version, effective_from, body) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::timestamptz[], $5::jsonb[])",
            )
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.tariff_id).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| i32::try_from(r.1.version).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| r.1.effective_from).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| serde_json::to_value(&r.1).unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
        }
        if !self.corrected_versions.is_empty() {
            let rows: Vec<_> = self.corrected_versions.iter().collect();
            sqlx::query(
                "UPDATE rm_rating_tariff_versions t SET body = u.body, revision = u.revision \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::jsonb[], $5::int[]) \
                 AS u(tenant_id, tariff_id, version, body, revision) \
                 WHERE (t.tenant_id, t.tariff_id, t.version) = (u.tenant_id, u.tariff_id, u.version)",
            )
            .bind(rows.iter().map(|r| r.0 .0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .1).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| i32::try_from(r.0 .2).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| serde_json::to_value(&r.1 .0).unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| i32::try_from(r.1 .1).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
        }
        if !self.new_assignments.is_empty() {
            let rows = &self.new_assignments;
            sqlx::query(
                "INSERT INTO rm_rating_assignments (tenant_id, account_id, effective_from, tariff_id) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::uuid[])",
            )
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2.effective_from).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2.tariff_id).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn write_accounts(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.balance_order.is_empty() {
            let existing: Vec<Key> = self
                .balance_order
                .iter()
                .filter(|k| self.balances_existing.contains(k))
                .copied()
                .collect();
            if !existing.is_empty() {
                sqlx::query(&format!("DELETE FROM rm_balances WHERE {ACCOUNT_KEYED}"))
                    .bind(existing.iter().map(|k| k.0).collect::<Vec<_>>())
                    .bind(existing.iter().map(|k| k.1).collect::<Vec<_>>())
                    .execute(&mut *conn)
                    .await?;
            }
            let rows: Vec<(Key, &Balance)> = self.balance_order.iter().map(|k| (*k, &self.balances[k])).collect();
            sqlx::query(
                "INSERT INTO rm_balances (tenant_id, account_id, kind, credit_limit, currency, billing_tz, payments, \
                 adjustments, settled_charges, open_reservations, balance, opened_at, last_position) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::text[], $6::text[], \
                 $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[], $12::timestamptz[], \
                 $13::bigint[])",
            )
            .bind(rows.iter().map(|r| r.0 .0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.kind.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.credit_limit).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.currency.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.billing_tz.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.payments).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.adjustments).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.settled_charges).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.open_reservations).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.balance).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.opened_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.last_position).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.entries.is_empty() {
            let rows = &self.entries;
            sqlx::query(
                "INSERT INTO rm_account_entries (tenant_id, account_id, stream_version, kind, ref_id, amount, \
                 balance_after, occurred_at, position) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::uuid[], $6::numeric[], \
                 $7::numeric[], $8::timestamptz[], $9::bigint[])",
            )
            .bind(rows.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.stream_version).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.kind.to_string()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.ref_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.balance_after).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.position).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        let new: Vec<(&(Uuid, Uuid, Uuid), &Reservation)> = self
            .reservations
            .iter()
            .filter(|(id, _)| self.reservations_new.contains(id))
            .collect();
        if !new.is_empty() {
            sqlx::query(
                "INSERT INTO rm_reservations (tenant_id, account_id, reservation_id, call_id, amount, max_duration_s, \
                 status, settled_amount, reserved_at, closed_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::numeric[], $6::int[], \
                 $7::text[], $8::numeric[], $9::timestamptz[], $10::timestamptz[])",
            )
            .bind(new.iter().map(|r| r.0 .0).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.0 .1).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.0 .2).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.call_id).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.amount).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.max_duration_s).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.status.to_string()).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.settled_amount).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.reserved_at).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.1.closed_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.reservation_closings.is_empty() {
            let rows: Vec<_> = self.reservation_closings.iter().collect();
            sqlx::query(
                "UPDATE rm_reservations r SET status = u.status, settled_amount = u.settled, closed_at = u.closed_at \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::numeric[], $6::timestamptz[]) \
                 AS u(tenant_id, account_id, reservation_id, status, settled, closed_at) \
                 WHERE r.tenant_id = u.tenant_id AND r.account_id = u.account_id AND r.reservation_id = u.reservation_id",
            )
            .bind(rows.iter().map(|r| r.0 .0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .2).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1 .0.to_string()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1 .1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1 .2).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn write_reports(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.hourly.is_empty() {
            let rows: Vec<_> = self.hourly.iter().collect();
            sqlx::query(
                "INSERT INTO rm_report_hourly AS t (tenant_id, hour, direction, trunk_id, currency, calls, answered, \
                 duration_s, billed_s, cost) \
                 SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::bigint[], \
                 $7::bigint[], $8::bigint[], $9::bigint[], $10::numeric[]) \
                 ON CONFLICT (tenant_id, hour, direction, trunk_id, currency) DO UPDATE SET \
                 calls = t.calls + EXCLUDED.calls, answered = t.answered + EXCLUDED.answered, \
                 duration_s = t.duration_s + EXCLUDED.duration_s, billed_s = t.billed_s + EXCLUDED.billed_s, \
                 cost = t.cost + EXCLUDED.cost",
            )
            .bind(rows.iter().map(|r| r.0 .0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .2.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .3).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .4.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.calls).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.answered).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.duration_s).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.billed_s).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.cost).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.destinations.is_empty() {
            let rows: Vec<_> = self.destinations.iter().collect();
            sqlx::query(
                "INSERT INTO rm_report_destinations AS t (tenant_id, day, destination, currency, calls, duration_s, cost) \
                 SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
                 $7::numeric[]) \
                 ON CONFLICT (tenant_id, day, destination, currency) DO UPDATE SET \
                 calls = t.calls + EXCLUDED.calls, duration_s = t.duration_s + EXCLUDED.duration_s, \
                 cost = t.cost + EXCLUDED.cost",
            )
            .bind(rows.iter().map(|r| r.0 .0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .2.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.0 .3.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.calls).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.duration_s).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.cost).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn write_live(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.live.is_empty() {
            return Ok(());
        }
        if !self.live_existing.is_empty() {
            sqlx::query(&format!("DELETE FROM rm_live_calls WHERE {KEYED}"))
                .bind(self.live_existing.iter().map(|k| k.0).collect::<Vec<_>>())
                .bind(self.live_existing.iter().map(|k| k.1).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?;
        }
        let rows: Vec<(&Key, &LiveCall)> = self
            .live
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_live_calls (tenant_id, call_id, state, caller, callee, direction, started_at, answer_at, on_hold) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::timestamptz[], $8::timestamptz[], $9::bool[])",
        )
        .bind(rows.iter().map(|r| r.0 .0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.0 .1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.state.to_string()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.caller.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.callee.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.direction.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.started_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.answer_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.on_hold).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Column vectors of charges' corrections, for a bulk insert or update.
#[derive(Default)]
struct CorrectionColumns {
    revision: Vec<Option<i32>>,
    billed_s: Vec<Option<i32>>,
    amount: Vec<Option<Decimal>>,
    amount_exact: Vec<Option<Decimal>>,
    explanation: Vec<Option<String>>,
}

impl CorrectionColumns {
    fn of<'a>(rows: impl Iterator<Item = &'a ChargeRow>) -> CorrectionColumns {
        let mut c = CorrectionColumns::default();
        for row in rows {
            let correction = row.correction.as_ref();
            c.revision.push(correction.map(|x| x.revision));
            c.billed_s.push(correction.and_then(|x| x.billed_s));
            c.amount.push(correction.and_then(|x| x.amount));
            c.amount_exact.push(correction.and_then(|x| x.amount_exact));
            c.explanation.push(correction.map(|x| x.explanation.clone()));
        }
        c
    }
}

/// Column vectors of the legs' media counters, in the order of `write_cdrs`' insert.
#[derive(Default)]
struct MediaColumns {
    codec: Vec<Option<String>>,
    /// packets received, sent; bytes received, sent; packets lost; jitter (µs).
    counters: [Vec<Option<i64>>; 6],
}

impl MediaColumns {
    fn push(&mut self, media: Option<&LegMediaRow>) {
        self.codec.push(media.map(|m| m.codec.clone()));
        let values = media.map(|m| {
            [
                m.packets_received,
                m.packets_sent,
                m.bytes_received,
                m.bytes_sent,
                m.packets_lost,
                m.jitter_us,
            ]
        });
        for (i, column) in self.counters.iter_mut().enumerate() {
            column.push(values.map(|v| v[i]));
        }
    }
}

/// Column vectors for one bulk insert of CDRs.
#[derive(Default)]
struct CdrColumns {
    tenant_id: Vec<Uuid>,
    call_id: Vec<Uuid>,
    direction: Vec<String>,
    caller: Vec<String>,
    caller_name: Vec<String>,
    callee: Vec<String>,
    callee_name: Vec<String>,
    did: Vec<Option<String>>,
    trunk_id: Vec<Option<Uuid>>,
    account_id: Vec<Option<Uuid>>,
    started_at: Vec<DateTime<Utc>>,
    authorized_at: Vec<Option<DateTime<Utc>>>,
    max_duration_s: Vec<Option<i32>>,
    rejected_reason: Vec<Option<String>>,
    ring_at: Vec<Option<DateTime<Utc>>>,
    answer_at: Vec<Option<DateTime<Utc>>>,
    answered_leg: Vec<Option<Uuid>>,
    end_at: Vec<Option<DateTime<Utc>>>,
    duration_s: Vec<Option<i32>>,
    billed_s: Vec<Option<i32>>,
    end_reason: Vec<Option<String>>,
    hangup_by: Vec<Option<String>>,
    sip_status: Vec<Option<i32>>,
    holds: Vec<i32>,
    transfers: Vec<i32>,
    transferred_to: Vec<Option<String>>,
    charge: Vec<Option<Decimal>>,
    currency: Vec<Option<String>>,
    last_position: Vec<i64>,
}

impl CdrColumns {
    fn with_capacity(n: usize) -> Self {
        let mut c = CdrColumns::default();
        c.tenant_id.reserve(n);
        c.call_id.reserve(n);
        c
    }

    fn push(&mut self, key: Key, cdr: &Cdr) {
        self.tenant_id.push(key.0);
        self.call_id.push(key.1);
        self.direction.push(cdr.direction.clone());
        self.caller.push(cdr.caller.clone());
        self.caller_name.push(cdr.caller_name.clone());
        self.callee.push(cdr.callee.clone());
        self.callee_name.push(cdr.callee_name.clone());
        self.did.push(cdr.did.clone());
        self.trunk_id.push(cdr.trunk_id);
        self.account_id.push(cdr.account_id);
        self.started_at.push(cdr.started_at);
        self.authorized_at.push(cdr.authorized_at);
        self.max_duration_s.push(cdr.max_duration_s);
        self.rejected_reason.push(cdr.rejected_reason.clone());
        self.ring_at.push(cdr.ring_at);
        self.answer_at.push(cdr.answer_at);
        self.answered_leg.push(cdr.answered_leg);
        self.end_at.push(cdr.end_at);
        self.duration_s.push(cdr.duration_s);
        self.billed_s.push(cdr.billed_s);
        self.end_reason.push(cdr.end_reason.clone());
        self.hangup_by.push(cdr.hangup_by.clone());
        self.sip_status.push(cdr.sip_status);
        self.holds.push(cdr.holds);
        self.transfers.push(cdr.transfers);
        self.transferred_to.push(cdr.transferred_to.clone());
        self.charge.push(cdr.charge);
        self.currency.push(cdr.currency.clone());
        self.last_position.push(cdr.last_position);
    }
}

/// Whole seconds of a duration, a started second counting as one (as carriers bill).
fn whole_seconds(delta: TimeDelta) -> i32 {
    let ms = delta.num_milliseconds().max(0);
    i32::try_from((ms + 999) / 1000).unwrap_or(i32::MAX)
}

fn live_state(text: &str) -> &'static str {
    match text {
        "authorized" => "authorized",
        "ringing" => "ringing",
        "answered" => "answered",
        "on_hold" => "on_hold",
        _ => "initiated",
    }
}

pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Internal => "internal",
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

fn party_name(party: Party) -> &'static str {
    match party {
        Party::Caller => "caller",
        Party::Callee => "callee",
        Party::System => "system",
        Party::Operator => "operator",
    }
}

fn end_reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::NormalClearing => "normal_clearing",
        EndReason::Busy => "busy",
        EndReason::NoAnswer => "no_answer",
        EndReason::Unavailable => "unavailable",
        EndReason::NotFound => "not_found",
        EndReason::Cancelled => "cancelled",
        EndReason::Rejected => "rejected",
        EndReason::CreditExhausted => "credit_exhausted",
        EndReason::Failed => "failed",
        EndReason::HangupRequested => "hangup_requested",
        EndReason::ConferenceEnded => "conference_ended",
        EndReason::Kicked => "kicked",
    }
}
