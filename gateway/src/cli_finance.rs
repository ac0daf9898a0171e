//! `ledgerline account close-period` and `ledgerline tariff correct`: finance's commands on
//! the command line, printing the projected invoice or what a correction re-rated.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{anyhow, Context};
use billing::csv::{self as deck_csv, DeckOptions};
use billing::invoice::{TaxMode, TaxPolicy};
use clap::Subcommand;
use commands::EventStore;
use gateway::finance::{self, TariffCorrection};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::roles;

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Close a billing period of an account: its invoice is frozen "as billed" and printed.
    /// Later charges and corrections for it become adjustments in the first open period.
    ClosePeriod {
        #[arg(long)]
        account: Uuid,
        /// The period, a calendar month in the account's billing time zone.
        #[arg(long, value_name = "YYYY-MM")]
        period: String,
        /// The tenant's tax rate in percent.
        #[arg(long, value_name = "PERCENT", default_value = "0")]
        tax: String,
        /// Whether prices include the tax or it is added on top.
        #[arg(long, value_name = "exclusive|inclusive", default_value = "exclusive")]
        tax_mode: String,
        /// The tenant the account must belong to (checked when given).
        #[arg(long)]
        tenant: Option<Uuid>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TariffCommand {
    /// Correct a published tariff version with the deck it should have had. Every charge
    /// billed with it is re-rated; closed invoices keep "as billed", and the differences are
    /// posted as adjustments in the first open period.
    Correct {
        #[arg(long)]
        tariff: Uuid,
        /// The version to correct (1 = the first published).
        #[arg(long)]
        version: u32,
        /// The corrected deck (the same columns as `ledgerline rate --deck`).
        #[arg(long, value_name = "DECK.csv")]
        deck: PathBuf,
        /// Why, as the adjustment lines will say.
        #[arg(long)]
        reason: String,
        /// The tenant the tariff must belong to (checked when given).
        #[arg(long)]
        tenant: Option<Uuid>,
    },
}

#[allow(clippy::disallowed_methods)] // The binary is where the clock is read.
fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "finance".into()))
}

fn tax_policy(rate: &str, mode: &str) -> anyhow::Result<TaxPolicy> {
    let rate_pct = Decimal::from_str(rate.trim().trim_end_matches('%'))
        .map_err(|_| anyhow!("--tax '{rate}' is not a percentage (e.g. 19 or 7.5)"))?;
    let mode = match mode {
        "exclusive" => TaxMode::Exclusive,
        "inclusive" => TaxMode::Inclusive,
        other => return Err(anyhow!("--tax-mode '{other}' is neither exclusive nor inclusive")),
    };
    Ok(TaxPolicy { rate_pct, mode })
}

pub async fn account(data_dir: &Path, command: AccountCommand) -> anyhow::Result<ExitCode> {
    let AccountCommand::ClosePeriod {
        account,
        period,
        tax,
        tax_mode,
        tenant,
    } = command;
    // Check the input before opening anything: bad input changes nothing.
    let period = finance::parse_period(&period)?;
    let tax = tax_policy(&tax, &tax_mode)?;
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let result = finance::close_period(&store, account, tenant, period, tax, now(), &actor()).await;
    db.close().await;
    let closed = result?;
    if closed.newly_closed {
        say!("closed {period} for account {account} (tenant {})", closed.tenant_id);
    } else {
        say!("{period} of account {account} was already closed by this request; nothing changed");
    }
    say!("{}", closed.document.trim_end());
    if closed.corrected_total != closed.billed_total {
        say!(
            "as corrected: total {} (as billed {})",
            closed.corrected_total,
            closed.billed_total
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tariff(data_dir: &Path, command: TariffCommand) -> anyhow::Result<ExitCode> {
    let TariffCommand::Correct {
        tariff,
        version,
        deck,
        reason,
        tenant,
    } = command;
    let text = std::fs::read_to_string(&deck).with_context(|| format!("reading {}", deck.display()))?;
    let parsed = deck_csv::parse_deck(&text, &DeckOptions::default()).map_err(|e| anyhow!("{}:{e}", deck.display()))?;
    let correction = TariffCorrection {
        tariff_id: tariff,
        tenant,
        version,
        rates: parsed.rates,
        offpeak_window: None,
        crossing: None,
        posting: None,
        reason,
    };
    let db = roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let ctx = commands::CommandContext::new(uuid::Uuid::new_v4(), &actor(), "cli", now());
    let result = finance::correct_tariff(&store, &correction, &ctx).await;
    db.close().await;
    let done = result?;
    if done.newly_corrected {
        say!(
            "tariff {tariff} version {version}: correction {} recorded",
            done.revision
        );
    } else {
        say!(
            "tariff {tariff} version {version} already has this deck (correction {}); invoices brought up to date",
            done.revision
        );
    }
    say!(
        "re-rated {} charges ({} not rated by the corrected deck, left as billed); {} invoice adjustments, total {}",
        done.charges,
        done.unrated,
        done.adjustments,
        done.adjustment_total
    );
    Ok(ExitCode::SUCCESS)
}
