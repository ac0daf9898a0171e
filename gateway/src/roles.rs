//! The long-running roles (`up`, `projector`) and the shared way to open the database.

use std::path::Path;
use std::process::ExitCode;

use commands::db::Database;
use commands::EventStore;
use gateway::sip::abuse::AbuseConfig;
use gateway::sip::registrar::RegistrarConfig;
use gateway::sip_service::{SipConfig, SipService};
use tokio::sync::watch;
use uuid::Uuid;

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Identifies this node in event metadata.
    #[arg(long, env = "LEDGERLINE_NODE_ID", default_value = "node-1")]
    pub node_id: String,
    /// Seed a demo tenant (extensions, a tariff, accounts, a day of calls) and say how to use it.
    #[arg(long)]
    pub demo: bool,
    #[command(flatten)]
    pub sip: SipArgs,
    #[command(flatten)]
    pub media: crate::media_role::MediaArgs,
    #[command(flatten)]
    pub http: crate::cli_api::HttpArgs,
}

#[derive(clap::Args, Debug)]
pub struct SipArgs {
    /// Where the SIP node listens, UDP and TCP (port 0 picks a free port).
    #[arg(long, env = "LEDGERLINE_SIP_BIND", default_value = "0.0.0.0:5060")]
    pub sip_bind: std::net::SocketAddr,
    /// Signs digest nonces; give every SIP node of a deployment the same one.
    #[arg(long, env = "LEDGERLINE_SIP_SECRET", hide_env_values = true)]
    pub sip_secret: Option<String>,
    /// Offer SHA-256 digest before MD5 (RFC 8760's order); off by default because many
    /// phones (and sipp 3.6) read only the first challenge and know only MD5.
    #[arg(long, env = "LEDGERLINE_SIP_PREFER_SHA256")]
    pub sip_prefer_sha256: bool,
    /// Challenge with MD5 only, for phones that fail on a SHA-256 challenge instead of
    /// skipping it (baresip 1.0); SHA-256 credentials are still accepted.
    #[arg(long, env = "LEDGERLINE_SIP_MD5_ONLY", conflicts_with = "sip_prefer_sha256")]
    pub sip_md5_only: bool,
    /// The `host:port` this node writes in Via and Contact (default: the bind address, or
    /// this machine's outward address when bound to 0.0.0.0).
    #[arg(long, env = "LEDGERLINE_SIP_ADVERTISE")]
    pub sip_advertise: Option<String>,
    /// Seconds a call may ring before it ends unanswered (408).
    #[arg(long, env = "LEDGERLINE_SIP_NO_ANSWER", default_value_t = 60)]
    pub sip_no_answer_secs: u64,
    /// How long (ms) the SIP node trusts a directory answer before asking Postgres again: a
    /// suspension or disabled extension takes effect within this (plus the projection's lag).
    #[arg(long, env = "LEDGERLINE_SIP_DIRECTORY_TTL_MS", default_value_t = 2000)]
    pub sip_directory_ttl_ms: u64,
    /// How long (ms) the SIP node answers an unchanged REGISTER from the bindings it last
    /// read, instead of reading the location table again; every change to the table, by
    /// any node, is announced to every node, which then reads afresh. 0 reads every time.
    #[arg(long, env = "LEDGERLINE_SIP_LOCATION_CACHE_MS", default_value_t = 30_000)]
    pub sip_location_cache_ms: u64,
    /// Block a source address after this many failed authentications within the window.
    #[arg(long, env = "LEDGERLINE_SIP_BLOCK_AFTER", default_value_t = 10)]
    pub sip_block_after: usize,
    #[arg(long, env = "LEDGERLINE_SIP_BLOCK_WINDOW", default_value_t = 300)]
    pub sip_block_window_secs: i64,
    /// How long a blocked address stays blocked.
    #[arg(long, env = "LEDGERLINE_SIP_BLOCK_FOR", default_value_t = 900)]
    pub sip_block_for_secs: i64,
    /// The media node's control address (`host:port`, see `ledgerline media`): every call's
    /// RTP is anchored there. Without it `sip` passes SDP through; `up` uses its own media node.
    #[arg(long, env = "LEDGERLINE_SIP_MEDIA_CONTROL")]
    pub sip_media_control: Option<std::net::SocketAddr>,
}

#[derive(clap::Args, Debug)]
pub struct SipRoleArgs {
    #[arg(long, env = "LEDGERLINE_NODE_ID", default_value = "sip-1")]
    pub node_id: String,
    #[command(flatten)]
    pub sip: SipArgs,
}

fn sip_config(node_id: &str, args: &SipArgs) -> SipConfig {
    let secret = match &args.sip_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => {
            tracing::warn!("no --sip-secret: nonces from this node are valid on this node only");
            let mut secret = Uuid::new_v4().as_bytes().to_vec();
            secret.extend_from_slice(Uuid::new_v4().as_bytes());
            secret
        }
    };
    SipConfig {
        bind: args.sip_bind,
        node_id: node_id.to_string(),
        secret,
        prefer_sha256: args.sip_prefer_sha256,
        offer_sha256: !args.sip_md5_only,
        advertise: args.sip_advertise.clone(),
        no_answer: std::time::Duration::from_secs(args.sip_no_answer_secs.max(1)),
        directory_ttl: std::time::Duration::from_millis(args.sip_directory_ttl_ms),
        location_cache_ttl: std::time::Duration::from_millis(args.sip_location_cache_ms),
        registrar: RegistrarConfig::default(),
        abuse: AbuseConfig {
            max_failures: args.sip_block_after.max(1),
            window: chrono::Duration::seconds(args.sip_block_window_secs.max(1)),
            block_for: chrono::Duration::seconds(args.sip_block_for_secs.max(1)),
            ..AbuseConfig::default()
        },
        media_control: args.sip_media_control,
    }
}

#[derive(clap::Args, Debug)]
pub struct ProjectorArgs {
    /// Events per projection transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_size: i64,
    /// Catch up once and exit instead of following the log.
    #[arg(long)]
    pub once: bool,
}

/// Open `DATABASE_URL` or the embedded cluster, and migrate.
pub async fn open(data_dir: &Path) -> anyhow::Result<Database> {
    let db = Database::open(data_dir, 16).await?;
    db.migrate().await?;
    Ok(db)
}

/// A URL without its password, for printing.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Bring every projection up to date (used before a CLI read).
pub async fn catch_up(store: &EventStore) -> anyhow::Result<()> {
    crate::projectors::catch_up_all(store, 500).await?;
    Ok(())
}

pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        let _ = tx.send(true);
    });
    rx
}

pub async fn up(data_dir: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    let db = open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let shutdown = shutdown_signal();
    // The SIP node's lookups get a pool of their own, so projections catching up never
    // keep a phone waiting for a connection.
    let sip_pool = commands::db::connect(&db.url, 8).await?;
    // The media node first: the SIP node anchors every call's media on it.
    let media = crate::media_role::start(
        store.clone(),
        data_dir,
        &args.node_id,
        &args.media,
        crate::media_role::UP_CONTROL.into(),
    )
    .await?;
    let mut sip_config = sip_config(&args.node_id, &args.sip);
    sip_config.media_control.get_or_insert(media.control_addr);
    let sip = SipService::start(store.clone(), sip_pool, sip_config, shutdown.clone()).await?;
    let api = gateway::api::start(store.clone(), args.http.config(&args.node_id), shutdown.clone()).await?;
    say!("ledgerline up: node {}", args.node_id);
    match &db.embedded {
        Some(pg) => say!(
            "  database: embedded Postgres on 127.0.0.1:{} (cluster {})",
            pg.port(),
            pg.cluster_dir().display()
        ),
        None => say!("  database: {}", redacted(&db.url)),
    }
    say!("  sip: listening on udp+tcp {}", sip.local_addr);
    say!("  media: control on tcp {}", media.control_addr);
    say!(
        "  http: API on {} (GraphQL /graphql, GraphiQL /graphiql, metrics /metrics)",
        api.local_addr
    );
    say!(
        "  projector: following the log (read models: {})",
        crate::projectors::NAMES
    );
    if args.demo {
        crate::simulate::demo(&store, sip.local_addr).await?;
    }
    let _webhooks = gateway::webhooks::spawn(store.clone(), shutdown.clone())?;
    say!("  webhooks: dispatching signed deliveries (ledgerline webhook --help)");
    say!("  stop with Ctrl-C");
    let result = crate::projectors::run_all(&store, 500, shutdown).await;
    say!("ledgerline: stopping");
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

pub async fn sip(data_dir: &Path, args: SipRoleArgs) -> anyhow::Result<ExitCode> {
    let db = open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let shutdown = shutdown_signal();
    let sip = SipService::start(
        store,
        db.pool.clone(),
        sip_config(&args.node_id, &args.sip),
        shutdown.clone(),
    )
    .await?;
    say!("ledgerline sip: node {}", args.node_id);
    say!("  sip: listening on udp+tcp {}", sip.local_addr);
    say!("  stop with Ctrl-C");
    let mut shutdown = shutdown;
    let _ = shutdown.wait_for(|stop| *stop).await;
    sip.task.abort();
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn projector(data_dir: &Path, args: ProjectorArgs) -> anyhow::Result<ExitCode> {
    let db = open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    let result = if args.once {
        crate::projectors::catch_up_all(&store, args.batch_size)
            .await
            .map(|n| say!("projector: applied {n} events"))
    } else {
        let shutdown = shutdown_signal();
        let _webhooks = gateway::webhooks::spawn(store.clone(), shutdown.clone())?;
        crate::projectors::run_all(&store, args.batch_size, shutdown).await
    };
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}
