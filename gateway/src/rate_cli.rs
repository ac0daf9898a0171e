//! `ledgerline rate`: the finance command line, a thin IO shell around `billing`'s pure rating.
//!
//! It reads the deck and calls files, lets `billing::csv` parse and rate them, and writes the
//! charges CSV to stdout in one piece, so a malformed file produces an error naming
//! `file:line:column` and no output at all. With `--max-duration` it answers how long a call
//! to a destination may last on a balance instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use billing::csv::{self as deck_csv, DeckOptions};
use billing::rating::{self, AuthorizationError, PricingContext};
use billing::{CompiledTariff, Crossing, OffPeakWindow, Posting, RoundingMode};
use chrono::{DateTime, Utc};

/// Rate calls against a rate deck, or compute the maximum duration a balance allows.
#[derive(clap::Args, Debug)]
pub struct RateArgs {
    /// The rate deck (header: prefix,first_interval_s,next_interval_s,price_per_min,...).
    #[arg(long, value_name = "DECK.csv")]
    pub deck: PathBuf,

    /// The calls to rate (header: call_id,destination,answered_at,duration_s).
    #[arg(
        long,
        value_name = "CALLS.csv",
        required_unless_present = "max_duration",
        conflicts_with = "max_duration"
    )]
    pub calls: Option<PathBuf>,

    /// The billing time zone in which off-peak hours are read (IANA name).
    #[arg(long, value_name = "TZ", default_value = "UTC")]
    pub timezone: String,

    /// The daily off-peak window in the billing time zone, e.g. 19:00-07:00.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub offpeak: Option<String>,

    /// How a call crossing a peak/off-peak boundary is priced.
    #[arg(long, value_name = "whole_call|split", default_value = "whole_call")]
    pub crossing: String,

    /// Decimal places charges are posted at.
    #[arg(long, value_name = "N", default_value_t = billing::money::DEFAULT_POSTING_SCALE_DP)]
    pub scale: u32,

    /// Print the maximum duration in seconds for --destination on --balance instead of rating.
    #[arg(long, requires_all = ["destination", "balance"])]
    pub max_duration: bool,

    /// The number dialled (with --max-duration).
    #[arg(long, value_name = "NUMBER", requires = "max_duration")]
    pub destination: Option<String>,

    /// The funds available (with --max-duration).
    #[arg(long, value_name = "AMOUNT", requires = "max_duration")]
    pub balance: Option<String>,

    /// When the call is answered, RFC 3339 (with --max-duration; default: now).
    #[arg(long, value_name = "TIME", requires = "max_duration")]
    pub answered_at: Option<String>,
}

/// Runs `ledgerline rate`.
pub fn run(args: &RateArgs) -> Result<()> {
    let billing_tz = billing::parse_timezone(&args.timezone).map_err(|m| anyhow!("--timezone: {m}"))?;
    let offpeak_window = match &args.offpeak {
        Some(text) => Some(OffPeakWindow::from_str(text).map_err(|m| anyhow!("--offpeak: {m}"))?),
        None => None,
    };
    let crossing = Crossing::from_str(&args.crossing).map_err(|m| anyhow!("--crossing: {m}"))?;
    if args.scale > billing::money::MAX_POSTING_SCALE_DP {
        return Err(anyhow!(
            "--scale: {} exceeds {} places",
            args.scale,
            billing::money::MAX_POSTING_SCALE_DP
        ));
    }
    let options = DeckOptions {
        offpeak_window,
        crossing,
        posting: Posting {
            scale_dp: args.scale,
            rounding: RoundingMode::HalfUp,
        },
        ..DeckOptions::default()
    };
    let deck_text = read(&args.deck)?;
    let version = deck_csv::parse_deck(&deck_text, &options).map_err(|e| anyhow!("{}:{e}", args.deck.display()))?;
    let tariff = CompiledTariff::new(version);

    if args.max_duration {
        return print_max_duration(args, &tariff, billing_tz);
    }

    // clap guarantees --calls without --max-duration; say so plainly if it ever does not.
    let calls_path = args
        .calls
        .as_ref()
        .ok_or_else(|| anyhow!("--calls is required unless --max-duration is given"))?;
    let calls_text = read(calls_path)?;
    let calls = deck_csv::parse_calls(&calls_text).map_err(|e| anyhow!("{}:{e}", calls_path.display()))?;
    let rows = deck_csv::rate_calls(&tariff, &calls, billing_tz);
    let output = deck_csv::render_output(&rows);

    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the charges to stdout")?;
    let unrated = deck_csv::unrated_count(&rows);
    if unrated > 0 {
        eprintln!("warning: {unrated} call(s) matched no rate; their rows have an empty amount");
    }
    Ok(())
}

fn print_max_duration(args: &RateArgs, tariff: &CompiledTariff, billing_tz: billing::Tz) -> Result<()> {
    // clap's `requires_all` makes both present with --max-duration.
    let destination = args
        .destination
        .as_deref()
        .ok_or_else(|| anyhow!("--max-duration needs --destination"))?;
    let balance_text = args
        .balance
        .as_deref()
        .ok_or_else(|| anyhow!("--max-duration needs --balance"))?;
    let balance = deck_csv::parse_decimal(balance_text).map_err(|m| anyhow!("--balance: {m}"))?;
    let answered_at: DateTime<Utc> = match &args.answered_at {
        Some(text) => deck_csv::parse_time(text).map_err(|m| anyhow!("--answered-at: {m}"))?,
        // The binary is where the clock may be read. Through `SystemTime` rather than
        // `Utc::now`, which needs chrono's `clock` feature that the workspace leaves off.
        None => {
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now();
            DateTime::<Utc>::from(now)
        }
    };
    let rate = rating::lookup(tariff, destination).map_err(|e| anyhow!("--destination: {e}"))?;
    let context = PricingContext::new(&tariff.version, rate, billing_tz);
    match rating::max_duration(&context, answered_at, balance, rating::MAX_CALL_DURATION_S) {
        Ok(max) => {
            println!("{}", max.actual_s);
            Ok(())
        }
        Err(AuthorizationError::InsufficientFunds {
            available,
            first_charge,
        }) => Err(anyhow!(
            "rejected: balance {available} does not cover the first interval ({first_charge}) of prefix {}",
            rate.prefix
        )),
        Err(AuthorizationError::Rating(e)) => Err(anyhow!("{e}")),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}
