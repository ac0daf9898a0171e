//! Finance's commands on accounts and tariffs: closing a billing period, and correcting a
//! tariff version with the re-rating that follows. The shells around the `billing` deciders.
//!
//! Closing a period is one `ClosePeriod` on the account's invoice book; the invoice document
//! is then the `invoices` projection's. A tariff correction is a `TariffVersionCorrected` on
//! the tariff; the `billing` projection re-rates every charge billed with the version (the
//! "as corrected" amount beside the billed one), and this module turns each difference into a
//! `CorrectCharge` on the account's invoice book: an adjustment in the first open period,
//! never an edit of a closed one. Every command id derives from what it does (the account and
//! period; the tariff, version, revision and account), so running a step twice has one effect.

use std::collections::BTreeMap;
use std::time::Duration;

use billing::account::{self, AccountCommand, AccountRejection, AccountState};
use billing::aggregates::{Account, InvoiceBook, Tariff};
use billing::invoice::{self, BillingPeriod, InvoiceCommand, InvoiceRejection, InvoiceState, TaxPolicy};
use billing::tariff::{self, Rate, TariffCommand, TariffRejection, TariffState};
use billing::{Crossing, OffPeakWindow, Posting};
use chrono::{DateTime, Utc};
use commands::{CommandContext, CommandError, CommandHandler, EventStore, StreamRef};
use projections::billing::Billing;
use projections::invoices::Invoices;
use projections::Runner;
use rust_decimal::Decimal;
use uuid::Uuid;

/// How long a step waits for the projections to see what it wrote.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);

/// Why a finance command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum FinanceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("refused: {0}")]
    Rejected(String),
    #[error("the log or a read model could not be reached: {0}")]
    Store(String),
}

fn store_error(e: impl std::fmt::Display) -> FinanceError {
    FinanceError::Store(e.to_string())
}

fn command_error<R: std::error::Error>(e: CommandError<R>) -> FinanceError {
    match e {
        CommandError::Rejected(r) => FinanceError::Rejected(r.to_string()),
        other => FinanceError::Store(other.to_string()),
    }
}

/// Parse `YYYY-MM`.
pub fn parse_period(text: &str) -> Result<BillingPeriod, FinanceError> {
    let bad = || FinanceError::InvalidInput(format!("period '{text}' is not YYYY-MM (e.g. 2025-03)"));
    let (year, month) = text.trim().split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || month.len() != 2 {
        return Err(bad());
    }
    let year: i32 = year.parse().map_err(|_| bad())?;
    let month: u32 = month.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&month) || !(1970..=9999).contains(&year) {
        return Err(bad());
    }
    Ok(BillingPeriod { year, month })
}

/// The tenant a stream belongs to, checked against the one the caller names.
async fn owner(store: &EventStore, stream_id: &str, expected: Option<Uuid>, what: &str) -> Result<Uuid, FinanceError> {
    let tenant: Option<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM streams WHERE stream_id = $1")
        .bind(stream_id)
        .fetch_optional(store.pool())
        .await
        .map_err(store_error)?;
    match (tenant, expected) {
        (Some(found), Some(wanted)) if found != wanted => Err(FinanceError::NotFound(format!(
            "{what} does not belong to tenant {wanted}"
        ))),
        (Some(found), _) => Ok(found),
        (None, _) => Err(FinanceError::NotFound(format!("{what} does not exist"))),
    }
}

async fn catch_up(store: &EventStore) -> Result<(), FinanceError> {
    Runner::new(store.clone(), Billing)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await
        .map_err(store_error)?;
    Runner::new(store.clone(), Invoices)
        .catch_up_to_now(CATCH_UP_DEADLINE)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// A closed period's invoice, as projected.
#[derive(Debug, Clone)]
pub struct ClosedInvoice {
    pub tenant_id: Uuid,
    /// False when this period had been closed by the same command before.
    pub newly_closed: bool,
    pub billed_total: Decimal,
    pub corrected_total: Decimal,
    pub document: String,
}

/// Close `period` of an account's invoice book (`ClosePeriod` through the command handler)
/// and return the projected invoice. Closing the same period again with the same request is
/// recognised and changes nothing.
pub async fn close_period(
    store: &EventStore,
    account_id: Uuid,
    tenant: Option<Uuid>,
    period: BillingPeriod,
    tax: TaxPolicy,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<ClosedInvoice, FinanceError> {
    let stream_id = invoice::stream_id(account_id);
    let tenant_id = owner(
        store,
        &stream_id,
        tenant,
        &format!("account {account_id}'s invoice book"),
    )
    .await?;
    let handler = CommandHandler::new(store.clone());
    // The same request twice is one close; another tax on a closed period is refused.
    let request = format!("close-period {period} {} {:?}", tax.rate_pct, tax.mode);
    let command_id = Uuid::new_v5(&account_id, request.as_bytes());
    let command = InvoiceCommand::ClosePeriod { period, now, tax };
    let outcome = handler
        .execute::<InvoiceBook, InvoiceRejection>(
            &CommandContext::new(command_id, actor, "cli", now),
            StreamRef::of::<InvoiceBook>(tenant_id, &account_id),
            |state: &InvoiceState| invoice::decide(&command, state),
        )
        .await
        .map_err(command_error)?;
    catch_up(store).await?;
    let row: Option<(Decimal, Decimal, String)> = sqlx::query_as(
        "SELECT billed_total, corrected_total, document FROM rm_invoices \
         WHERE tenant_id = $1 AND account_id = $2 AND period = $3",
    )
    .bind(tenant_id)
    .bind(account_id)
    .bind(period.to_string())
    .fetch_optional(store.pool())
    .await
    .map_err(store_error)?;
    let (billed_total, corrected_total, document) = row.ok_or_else(|| {
        FinanceError::Store(format!(
            "the invoice of {period} is not projected yet; see `ledgerline projector`"
        ))
    })?;
    Ok(ClosedInvoice {
        tenant_id,
        newly_closed: !outcome.replayed,
        billed_total,
        corrected_total,
        document,
    })
}

/// What a correction replaces in a version; `None` keeps the published value.
#[derive(Debug, Clone)]
pub struct TariffCorrection {
    pub tariff_id: Uuid,
    pub tenant: Option<Uuid>,
    pub version: u32,
    pub rates: Vec<Rate>,
    pub offpeak_window: Option<Option<OffPeakWindow>>,
    pub crossing: Option<Crossing>,
    pub posting: Option<Posting>,
    pub reason: String,
}

/// What a correction did.
#[derive(Debug, Clone, Default)]
pub struct Rerating {
    pub tenant_id: Uuid,
    /// The revision now in force for the version.
    pub revision: u32,
    /// False when the version already had exactly this deck (a re-run): only the invoice
    /// step ran, and found nothing left to do if the first run completed.
    pub newly_corrected: bool,
    /// Charges billed with the version and re-rated.
    pub charges: u64,
    /// Re-rated charges the corrected deck cannot rate (left as billed).
    pub unrated: u64,
    /// Invoice adjustments written, and their sum (positive: customers owe more).
    pub adjustments: u64,
    pub adjustment_total: Decimal,
}

/// Correct a tariff version, wait for the `billing` projection to re-rate its charges, and
/// post each difference on the account's invoice book.
/// `ctx` names the command (its id makes a retry a replay), who asked and when.
pub async fn correct_tariff(
    store: &EventStore,
    correction: &TariffCorrection,
    ctx: &CommandContext,
) -> Result<Rerating, FinanceError> {
    let (now, actor) = (ctx.now, ctx.actor.as_str());
    let stream_id = tariff::stream_id(correction.tariff_id);
    let what = format!("tariff {}", correction.tariff_id);
    let tenant_id = owner(store, &stream_id, correction.tenant, &what).await?;
    let handler = CommandHandler::new(store.clone());
    let stream = StreamRef::of::<Tariff>(tenant_id, &correction.tariff_id);
    let loaded = handler.load::<Tariff>(&stream).await.map_err(store_error)?;
    let Some((current, _)) = loaded.state.version(correction.version) else {
        return Err(FinanceError::NotFound(format!(
            "{what} has no version {}",
            correction.version
        )));
    };
    let command = TariffCommand::CorrectVersion {
        version: correction.version,
        rates: correction.rates.clone(),
        offpeak_window: correction.offpeak_window.unwrap_or(current.version.offpeak_window),
        crossing: correction.crossing.unwrap_or(current.version.crossing),
        posting: correction.posting.unwrap_or(current.version.posting),
        reason: correction.reason.clone(),
    };
    let result = handler
        .execute::<Tariff, TariffRejection>(ctx, stream.clone(), |state: &TariffState| {
            tariff::decide(&command, state)
        })
        .await;
    let newly_corrected = match result {
        Ok(_) => true,
        // A re-run after the tariff step: finish the invoice step for the revision in force.
        Err(CommandError::Rejected(TariffRejection::NothingCorrected { .. })) => false,
        Err(e) => return Err(command_error(e)),
    };
    let state = handler.load::<Tariff>(&stream).await.map_err(store_error)?.state;
    let revision = state.version(correction.version).map_or(0, |(_, r)| r);
    let name = state.header.as_ref().map_or(String::new(), |h| h.name.clone());
    catch_up(store).await?;
    let mut rerating = post_adjustments(
        store,
        tenant_id,
        correction.tariff_id,
        correction.version,
        revision,
        &format!(
            "tariff {name} v{} correction {revision}: {}",
            correction.version,
            correction.reason.trim()
        ),
        now,
        actor,
    )
    .await?;
    rerating.newly_corrected = newly_corrected;
    catch_up(store).await?;
    Ok(rerating)
}

/// Put every re-rated charge of `(tariff, version)` at `revision` on its invoice book as a
/// correction (an adjustment in the first open period; nothing for an unchanged amount).
#[allow(clippy::too_many_arguments)]
async fn post_adjustments(
    store: &EventStore,
    tenant_id: Uuid,
    tariff_id: Uuid,
    version: u32,
    revision: u32,
    reason: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<Rerating, FinanceError> {
    let number = i32::try_from(version).unwrap_or(i32::MAX);
    let rows: Vec<(Uuid, Uuid, Option<Decimal>)> = sqlx::query_as(
        "SELECT account_id, call_id, corrected_amount FROM rm_charges \
         WHERE tenant_id = $1 AND tariff_id = $2 AND tariff_version = $3 AND corrected_revision = $4 \
         ORDER BY account_id, call_id, leg_id",
    )
    .bind(tenant_id)
    .bind(tariff_id)
    .bind(number)
    .bind(i32::try_from(revision).unwrap_or(i32::MAX))
    .fetch_all(store.pool())
    .await
    .map_err(store_error)?;
    let mut rerating = Rerating {
        tenant_id,
        revision,
        ..Rerating::default()
    };
    let mut per_account: BTreeMap<Uuid, Vec<(Uuid, Decimal)>> = BTreeMap::new();
    for (account, call, corrected) in rows {
        rerating.charges += 1;
        match corrected {
            Some(amount) => per_account.entry(account).or_default().push((call, amount)),
            None => rerating.unrated += 1,
        }
    }
    let handler = CommandHandler::new(store.clone());
    let operation = format!("rerate {tariff_id} v{version} r{revision}");
    for (account, charges) in per_account {
        let book = invoice::stream_id(account);
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM streams WHERE tenant_id = $1 AND stream_id = $2)")
                .bind(tenant_id)
                .bind(&book)
                .fetch_one(store.pool())
                .await
                .map_err(store_error)?;
        if !exists {
            continue;
        }
        let command_id = Uuid::new_v5(&account, operation.as_bytes());
        let decide = |state: &InvoiceState| {
            // Charges the book holds (a call's charge id is its call id); the others were
            // never invoiced, so there is nothing to adjust.
            let commands: Vec<InvoiceCommand> = charges
                .iter()
                .filter(|(call, _)| state.charge_amount(*call).is_some())
                .map(|(call, amount)| InvoiceCommand::CorrectCharge {
                    correction_id: Uuid::new_v5(call, operation.as_bytes()),
                    charge_id: *call,
                    corrected_amount: *amount,
                    reason: reason.to_string(),
                })
                .collect();
            invoice::decide_all(&commands, state)
        };
        let stream = StreamRef::of::<InvoiceBook>(tenant_id, &account);
        let before = handler.load::<InvoiceBook>(&stream).await.map_err(store_error)?;
        let outcome = handler
            .execute::<InvoiceBook, InvoiceRejection>(
                &CommandContext::new(command_id, actor, "cli", now),
                stream.clone(),
                decide,
            )
            .await
            .map_err(command_error)?;
        // The balance follows the invoice: the account is adjusted by what the corrections
        // change (a charge corrected upwards costs the customer more). Idempotent by its id,
        // so a re-run that finds the invoice part done still completes this step.
        let delta: Decimal = charges
            .iter()
            .filter_map(|(call, amount)| before.state.charge_amount(*call).map(|billed| *amount - billed))
            .sum();
        if !delta.is_zero() {
            let adjustment_id = Uuid::new_v5(&account, format!("{operation} balance").as_bytes());
            let adjust = AccountCommand::Adjust {
                adjustment_id,
                amount: -delta,
                reason: format!("tariff correction: {reason}"),
            };
            handler
                .execute::<Account, AccountRejection>(
                    &CommandContext::new(adjustment_id, actor, "cli", now),
                    StreamRef::of::<Account>(tenant_id, &account),
                    |state: &AccountState| account::decide(&adjust, state),
                )
                .await
                .map_err(|e| FinanceError::Rejected(format!("adjusting the balance of account {account}: {e}")))?;
        }
        if outcome.replayed {
            continue;
        }
        rerating.adjustments += outcome.positions.len() as u64;
        // The same decision against the state it was taken on, for the total (a retry after
        // a concurrent write may have decided on a later state; the count above is exact).
        for event in decide(&before.state).unwrap_or_default() {
            if let invoice::InvoiceEvent::AdjustmentInvoiced(adjustment) = event {
                rerating.adjustment_total += adjustment.amount;
            }
        }
    }
    Ok(rerating)
}
