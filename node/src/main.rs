//! `chat-node`: runs one chat node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chat_node::config::{LogFormat, NodeConfig, Overrides};
use chat_node::server::Node;
use clap::Parser;

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
    /// Overrides http.listen.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
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
        http_listen: args.http_listen,
    };
    let cfg = NodeConfig::load(args.config.as_deref(), &overrides).context("configuration")?;
    if args.check_config {
        let mut shown = cfg.clone();
        shown.auth.jwt_secret = "<redacted>".into();
        if !shown.media.s3.secret_access_key.is_empty() {
            shown.media.s3.secret_access_key = "<redacted>".into();
        }
        println!("{}", toml::to_string_pretty(&shown)?);
        return Ok(());
    }
    chat_service::log::init(&cfg.log);
    // One TLS crypto provider for the whole process (QUIC, and the S3 client's HTTPS).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    println!(
        "chat-node ready {} {} {}",
        node.client_url(),
        node.admin_url(),
        node.http_url()
    );
    node.run(chat_service::signal::shutdown()).await
}
