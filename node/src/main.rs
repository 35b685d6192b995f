//! `chat-node`: runs one chat node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chat_node::config::{LogFormat, NodeConfig, Overrides};
use chat_node::server::Node;
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "chat-node", version, about = "A chat cluster node")]
struct Args {
    /// TOML config file (see node/chat-node.example.toml).
    #[arg(long, short, env = "CHAT_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Run as a cluster of one, without etcd.
    #[arg(long)]
    standalone: bool,
    /// Overrides node.id.
    #[arg(long)]
    node_id: Option<String>,
    /// Overrides node.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides client.listen (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides client.public_url.
    #[arg(long)]
    public_url: Option<String>,
    /// Overrides cluster.etcd_endpoints (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Overrides cluster.quic_listen.
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// Overrides admin.listen.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Overrides log.format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Check the configuration, print it (secret redacted) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let overrides = Overrides {
        id: args.node_id,
        data_dir: args.data_dir,
        standalone: args.standalone,
        listen: args.listen,
        public_url: args.public_url,
        log_format: args.log_format,
        etcd: args.etcd,
        quic_listen: args.quic_listen,
        admin_listen: args.admin_listen,
    };
    let cfg = NodeConfig::load(args.config.as_deref(), &overrides).context("configuration")?;
    if args.check_config {
        let mut shown = cfg.clone();
        shown.auth.jwt_secret = "<redacted>".into();
        println!("{}", toml::to_string_pretty(&shown)?);
        return Ok(());
    }
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(cfg));
    // Don't wait forever on blocking reads still running for connections that outlived the drain.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let node = Node::bind(cfg).await?;
    // One line on stdout for scripts and tests that start nodes with port 0; logs go to stderr.
    println!("chat-node ready {} {}", node.client_url(), node.admin_url());
    node.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(cfg: &NodeConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
