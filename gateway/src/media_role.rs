//! `ledgerline media`: the media role alone (RTP relay, conference mixer, control protocol),
//! and the arguments `up` shares with it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use commands::EventStore;
use media::engine::EngineConfig;
use media::node::{MediaConfig, MediaNode};

#[derive(clap::Args, Debug, Clone)]
pub struct MediaArgs {
    /// Where SIP nodes reach this media node's control protocol (JSON lines over TCP);
    /// `media` defaults to 127.0.0.1:2223, `up` to a free port (its SIP node is in-process).
    #[arg(long, env = "LEDGERLINE_MEDIA_CONTROL_BIND")]
    pub media_control_bind: Option<SocketAddr>,
    /// The address RTP sockets bind to (and that SDP announces unless --media-public-ip).
    #[arg(long, env = "LEDGERLINE_MEDIA_RTP_IP", default_value = "127.0.0.1")]
    pub media_rtp_ip: IpAddr,
    /// The address announced in SDP when the node is behind NAT itself.
    #[arg(long, env = "LEDGERLINE_MEDIA_PUBLIC_IP")]
    pub media_public_ip: Option<IpAddr>,
    /// The RTP port range (pairs: RTP even, RTCP odd); 0 and 0 pick ephemeral ports.
    #[arg(long, env = "LEDGERLINE_RTP_PORT_MIN", default_value_t = 20000)]
    pub rtp_port_min: u16,
    #[arg(long, env = "LEDGERLINE_RTP_PORT_MAX", default_value_t = 30000)]
    pub rtp_port_max: u16,
}

/// The control address of a standalone media node.
pub const DEFAULT_CONTROL: ([u8; 4], u16) = ([127, 0, 0, 1], 2223);
/// `up` runs SIP and media in one process: any free port will do.
pub const UP_CONTROL: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

#[derive(clap::Args, Debug)]
pub struct MediaRoleArgs {
    #[arg(long, env = "LEDGERLINE_NODE_ID", default_value = "media-1")]
    pub node_id: String,
    #[command(flatten)]
    pub media: MediaArgs,
}

/// Start the media node on the store (used by `media` and `up`).
pub async fn start(
    store: EventStore,
    data_dir: &Path,
    node_id: &str,
    args: &MediaArgs,
    default_control: SocketAddr,
) -> anyhow::Result<MediaNode> {
    let config = MediaConfig {
        node_id: node_id.to_string(),
        control_bind: args.media_control_bind.unwrap_or(default_control),
        engine: EngineConfig {
            bind_ip: args.media_rtp_ip,
            public_ip: args.media_public_ip,
            port_min: args.rtp_port_min,
            port_max: args.rtp_port_max,
            data_dir: data_dir.to_path_buf(),
        },
    };
    Ok(MediaNode::start(store, config).await?)
}

pub async fn run(data_dir: &Path, args: MediaRoleArgs) -> anyhow::Result<ExitCode> {
    let db = crate::roles::open(data_dir).await?;
    let store = EventStore::new(db.pool.clone());
    // Install the handlers before saying how to stop, so an early Ctrl-C is not lost.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let node = start(store, data_dir, &args.node_id, &args.media, DEFAULT_CONTROL.into()).await?;
    say!("ledgerline media: node {}", args.node_id);
    say!("  control: listening on tcp {}", node.control_addr);
    say!(
        "  rtp: {} ports {}-{}",
        args.media.media_rtp_ip,
        args.media.rtp_port_min,
        args.media.rtp_port_max
    );
    say!("  stop with Ctrl-C");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    drop(node);
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
