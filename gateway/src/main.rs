//! The `ledgerline` binary: parses the command line and runs one role or one task.
//!
//! This is the only place (with the store) that reads the clock; everything it decides
//! is delegated to `commands`, `projections` and `billing`.

/// Print a status line; a closed stdout (a detached daemon) is not an error worth dying for.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench_api;
mod bench_replay;
mod bench_store;
mod cli_api;
mod cli_conference;
mod cli_directory;
mod cli_events;
mod cli_finance;
mod cli_replay;
mod cli_routing;
mod cli_webhooks;
mod media_role;
mod projectors;
mod rate_bench;
mod rate_cli;
mod roles;
mod simulate;
mod simulate_conferences;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ledgerline",
    version,
    about = "Ledgerline: a multi-tenant cloud PBX whose every state change is an event and whose billing is exact.",
    long_about = "Ledgerline: a multi-tenant cloud PBX whose every state change is an event and whose billing is exact.\n\n\
                  Uses DATABASE_URL when set; otherwise starts a private Postgres cluster under --data-dir."
)]
pub struct Cli {
    /// Where the embedded Postgres cluster (and later recordings) live when DATABASE_URL is unset.
    #[arg(
        long,
        global = true,
        env = "LEDGERLINE_DATA_DIR",
        default_value = "./ledgerline-data"
    )]
    data_dir: PathBuf,
    /// Log filter (tracing's syntax), e.g. `info` or `ledgerline=debug`.
    #[arg(long, global = true, env = "LEDGERLINE_LOG", default_value = "info,sqlx=warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Migrate, then run every role in one process until Ctrl-C.
    Up(roles::UpArgs),
    /// Run the SIP signaling role alone (registrar and B2BUA).
    Sip(roles::SipRoleArgs),
    /// Run the media role alone (RTP relay, conference mixer; control protocol for SIP nodes).
    Media(media_role::MediaRoleArgs),
    /// Run the projector role alone (follows the log and builds the read models).
    Projector(roles::ProjectorArgs),
    /// Run the API role alone (GraphQL, REST exports, metrics) on --http-bind.
    Api(cli_api::ApiArgs),
    /// Create and revoke API keys.
    #[command(subcommand)]
    Apikey(cli_api::ApiKeyCommand),
    /// Apply the database migrations and exit.
    Migrate,
    /// Create, list and change tenants.
    #[command(subcommand)]
    Tenant(cli_directory::TenantCommand),
    /// Provision, list and change extensions.
    #[command(subcommand)]
    Extension(cli_directory::ExtensionCommand),
    /// Add, list and remove a tenant's SIP trunks.
    #[command(subcommand)]
    Trunk(cli_routing::TrunkCommand),
    /// Add, list and remove outbound routes (prefix → trunks in failover order).
    #[command(subcommand)]
    Route(cli_routing::RouteCommand),
    /// Add, list and remove inbound DIDs (DID → extension).
    #[command(subcommand)]
    Did(cli_routing::DidCommand),
    /// Register, list and remove a tenant's signed webhooks; read their delivery log.
    #[command(subcommand)]
    Webhook(cli_webhooks::WebhookCommandArgs),
    /// Create and list conference rooms.
    #[command(subcommand)]
    Conference(cli_conference::ConferenceCommand),
    /// Read the event log.
    #[command(subcommand)]
    Events(cli_events::EventsCommand),
    /// Finance on accounts: close a billing period.
    #[command(subcommand)]
    Account(cli_finance::AccountCommand),
    /// Finance on tariffs: correct a published version and re-rate its charges.
    #[command(subcommand)]
    Tariff(cli_finance::TariffCommand),
    /// Rate calls against a rate deck (CSV in, charges CSV out), or compute a maximum call duration.
    Rate(rate_cli::RateArgs),
    /// Check the log's integrity.
    #[command(subcommand)]
    Audit(cli_events::AuditCommand),
    /// Rebuild a projection into a shadow and swap it in, or build read models as of a past moment.
    Replay(cli_replay::ReplayArgs),
    /// Generate realistic call traffic through the real deciders into the log (deterministic from the seed).
    Simulate(simulate::SimulateArgs),
    /// Measure Ledgerline against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Event store append and catch-up read rates against plain SQL on the same database.
    Store(bench_store::BenchStoreArgs),
    /// Rating speed: a million legs against a 50,000-prefix deck, beside a linear scan.
    Rating,
    /// Projection rebuild rate (CDRs, charges, balances, reports) against a plain ordered read of the log.
    Replay(bench_replay::BenchReplayArgs),
    /// Conference participants mixed in real time per core, against a naive mixer; then the
    /// RTP relay line as `rtp_relay` prints it (the media issue's two figures in one run).
    Mixer,
    /// RTP packets relayed per second (batched engine) against a naive task-per-socket relay.
    #[command(name = "rtp_relay", alias = "rtp-relay")]
    RtpRelay,
    /// GraphQL charges page (p99 and throughput) over a tenant-month of a million charges, against the same query through sqlx.
    Api(bench_api::BenchApiArgs),
    /// CPU per digest registration in the SIP node's core (parse, transactions, registrar,
    /// rendering), without sockets or Postgres: to compare two builds of the core.
    #[command(name = "sip-core")]
    SipCore {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        passes: usize,
    },
}

/// mimalloc instead of glibc's malloc: the SIP node and the API allocate many short-lived
/// buffers per message, and glibc's free/consolidate showed as ~15% of the node's CPU under
/// REGISTER load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process: with THP on, every page the allocator takes
/// back from the kernel is a 2 MiB page zeroed on first touch, and under REGISTER load that
/// zeroing (`clear_page_erms`) was 15-20% of the node's CPU. Children (the embedded Postgres)
/// inherit the setting, which Postgres' own documentation recommends anyway.
fn without_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "PR_SET_THP_DISABLE refused");
    }
}

/// The `BENCH rtp_relay` line, printed by `bench rtp_relay` and after `bench mixer`'s own.
async fn relay_line() -> std::io::Result<String> {
    let (ours, naive) = media::bench::relay::run().await?;
    Ok(media::bench::bench_line("rtp_relay", ours, "naive", naive, "packets/s"))
}

fn main() -> std::process::ExitCode {
    without_transparent_huge_pages();
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ledgerline: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ledgerline: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Up(args) => roles::up(&data_dir, args).await,
        Command::Projector(args) => roles::projector(&data_dir, args).await,
        Command::Sip(args) => roles::sip(&data_dir, args).await,
        Command::Media(args) => media_role::run(&data_dir, args).await,
        Command::Api(args) => cli_api::serve(&data_dir, args).await,
        Command::Apikey(cmd) => cli_api::apikey(&data_dir, cmd).await,
        Command::Bench(BenchCommand::Api(args)) => bench_api::run(&data_dir, args).await,
        Command::Migrate => {
            let db = roles::open(&data_dir).await?;
            println!("migrations applied to {}", roles::redacted(&db.url));
            db.close().await;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Tenant(cmd) => cli_directory::tenant(&data_dir, cmd).await,
        Command::Extension(cmd) => cli_directory::extension(&data_dir, cmd).await,
        Command::Trunk(cmd) => cli_routing::trunk(&data_dir, cmd).await,
        Command::Route(cmd) => cli_routing::route(&data_dir, cmd).await,
        Command::Did(cmd) => cli_routing::did(&data_dir, cmd).await,
        Command::Webhook(cmd) => cli_webhooks::webhook(&data_dir, cmd).await,
        Command::Conference(cmd) => cli_conference::conference(&data_dir, cmd).await,
        Command::Events(cmd) => cli_events::events(&data_dir, cmd).await,
        Command::Account(cmd) => cli_finance::account(&data_dir, cmd).await,
        Command::Tariff(cmd) => cli_finance::tariff(&data_dir, cmd).await,
        Command::Audit(cmd) => cli_events::audit(&data_dir, cmd).await,
        Command::Bench(BenchCommand::Store(args)) => bench_store::run(&data_dir, args).await,
        Command::Bench(BenchCommand::Replay(args)) => bench_replay::run(&data_dir, args).await,
        Command::Replay(args) => cli_replay::replay(&data_dir, args).await,
        Command::Simulate(args) => simulate::run(&data_dir, args).await,
        // The mixer is pure computation (a blocking thread); the relay runs its own engine.
        Command::Bench(BenchCommand::Mixer) => {
            let (ours, naive) = tokio::task::spawn_blocking(media::bench::mixer).await?;
            say!(
                "{}",
                media::bench::bench_line("mixer", ours, "naive", naive, "participants")
            );
            say!("{}", relay_line().await?);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::RtpRelay) => {
            say!("{}", relay_line().await?);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::SipCore { users, rounds, passes }) => {
            let reports =
                tokio::task::spawn_blocking(move || gateway::sip::core_bench::run(users, rounds, passes.max(1)))
                    .await?
                    .map_err(std::io::Error::other)?;
            let mut micros: Vec<f64> = reports.iter().map(|r| r.micros_per_registration()).collect();
            micros.sort_by(f64::total_cmp);
            let median = micros[micros.len() / 2];
            say!(
                "sip-core: {} registrations a pass, {} passes: {:.2} µs of CPU per registration at best (median {median:.2}, max {:.2})",
                users * rounds,
                micros.len(),
                micros[0],
                micros[micros.len() - 1]
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Rating) => {
            tokio::task::spawn_blocking(rate_bench::run).await??;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Rate(args) => {
            tokio::task::spawn_blocking(move || rate_cli::run(&args)).await??;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
