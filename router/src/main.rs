//! `chat-router`: tells a client which node is its home. Stateless: it watches the ring and the
//! registered nodes in etcd and answers from memory, so any number can run, and it is never in
//! the message path. When etcd is unreachable it keeps answering from the last ring it saw.
//!
//! - `GET /v1/route/{user}`: `{"user", "node", "url", "epoch"}` as JSON;
//! - `GET /v1/connect/{user}`: `307` to the home node's WebSocket URL (WebSocket clients follow);
//! - any other `/v1/...` (the nodes' HTTP API): `307` to the same path on the home node of the
//!   bearer token's user (the node checks the token; the router only reads its `sub`);
//! - `GET /healthz`, `GET /readyz` (ring loaded), `GET /metrics` (Prometheus);
//! - with `[web]`: the web client's files at `/`, and in development `POST /dev/token` ([`web`]).
//!
//! With `router.tls_cert_file` and `tls_key_file` it speaks `https://` (`chat_service::tls`).

mod route;
mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::routing::{any, get};
use axum::Router;
use chat_cluster::{ClusterView, EtcdConfig};
use chat_service::config::EtcdSection;
use chat_service::log::{LogFormat, LogSection};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The router's configuration: defaults, then the TOML file, then `CHAT_ROUTER_<SECTION>__<KEY>`,
/// then flags. Unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RouterConfig {
    router: RouterSection,
    /// Where the cluster's state lives (the nodes' `cluster.etcd_endpoints` and `cluster.prefix`).
    cluster: EtcdSection,
    log: LogSection,
    /// The web client and development tokens (both off by default).
    web: web::WebSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RouterSection {
    /// Address of the HTTP listener (port 0 picks a free port).
    listen: SocketAddr,
    /// Longest user id answered (400 beyond it): keep it equal to the nodes'
    /// `limits.max_id_bytes`, so the router never sends a client to a node that would refuse it.
    max_id_bytes: usize,
    /// PEM certificate chain for TLS (`https://`, so that a web client served over https can
    /// ask where its user lives); empty: plain HTTP. Needs `tls_key_file`.
    tls_cert_file: String,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    tls_key_file: String,
    /// A client that has not finished its TLS handshake in this many milliseconds is dropped.
    tls_handshake_timeout_ms: u64,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            listen: "127.0.0.1:7000".parse().expect("valid address"),
            max_id_bytes: chat_proto::ids::DEFAULT_MAX_ID_BYTES,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "chat-router",
    version,
    about = "Tells chat clients which node is their home"
)]
struct Args {
    /// TOML config file.
    #[arg(long, short, env = "CHAT_ROUTER_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides router.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides cluster.etcd_endpoints (comma-separated).
    #[arg(long, value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Overrides cluster.prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Overrides log.format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Overrides web.dir: serve the web client's built files (`web/app/dist`) at `/`.
    #[arg(long)]
    web_dir: Option<PathBuf>,
    /// Overrides web.dev_token_secret_file (development only: anyone may get a token).
    #[arg(long)]
    dev_token_secret_file: Option<PathBuf>,
    /// Check the configuration, print it and exit.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> anyhow::Result<RouterConfig> {
    let mut cfg: RouterConfig = chat_service::config::load(args.config.as_deref(), "CHAT_ROUTER_")?;
    if let Some(v) = args.listen {
        cfg.router.listen = v;
    }
    if let Some(v) = &args.etcd {
        cfg.cluster.etcd_endpoints = v.clone();
    }
    if let Some(v) = &args.prefix {
        cfg.cluster.prefix = v.clone();
    }
    if let Some(v) = args.log_format {
        cfg.log.format = v;
    }
    if let Some(v) = &args.web_dir {
        cfg.web.dir = Some(v.clone());
    }
    if let Some(v) = &args.dev_token_secret_file {
        cfg.web.dev_token_secret_file = Some(v.clone());
    }
    anyhow::ensure!(
        (1..=1024).contains(&cfg.router.max_id_bytes),
        "router.max_id_bytes must be 1 to 1024 (as the nodes' limits.max_id_bytes)"
    );
    cfg.cluster.check("cluster")?;
    cfg.web.check().context("web")?;
    anyhow::ensure!(
        cfg.router.tls_cert_file.is_empty() == cfg.router.tls_key_file.is_empty(),
        "router.tls_cert_file and router.tls_key_file go together"
    );
    anyhow::ensure!(
        cfg.router.tls_handshake_timeout_ms >= 100,
        "router.tls_handshake_timeout_ms must be at least 100"
    );
    // Loaded here only to check the files (for --check-config too); run() loads them again.
    tls_acceptor(&cfg.router)?;
    Ok(cfg)
}

pub(crate) struct AppState {
    view: watch::Receiver<ClusterView>,
    max_id_bytes: usize,
}

impl chat_service::admin::Status for AppState {
    fn not_ready(&self) -> Vec<String> {
        if self.view.borrow().ring.is_some() {
            Vec::new()
        } else {
            vec!["no ring".into()]
        }
    }

    fn before_scrape(&self) {
        let (up, epoch, nodes) = {
            let v = self.view.borrow();
            (v.etcd_up, v.epoch(), v.nodes.len())
        };
        metrics::gauge!("chat_etcd_up").set(if up { 1.0 } else { 0.0 });
        metrics::gauge!("chat_ring_epoch").set(epoch as f64);
        metrics::gauge!("chat_router_nodes").set(nodes as f64);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = load(&args).context("configuration")?;
    if args.check_config {
        println!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    chat_service::log::init(&cfg.log);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: RouterConfig) -> anyhow::Result<()> {
    let metrics = chat_service::admin::recorder(&[]);
    let view = chat_cluster::watch(EtcdConfig {
        endpoints: cfg.cluster.etcd_endpoints.clone(),
        prefix: cfg.cluster.prefix.clone(),
    });
    let state = Arc::new(AppState {
        view,
        max_id_bytes: cfg.router.max_id_bytes,
    });
    // Pages on other origins (an app's own site) may ask where a user lives; the answer is
    // public (anyone can compute it from the ring) and no credentials are involved.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET]);
    let dev_secret = cfg.web.check()?;
    let app = Router::new()
        .route("/v1/route/{user}", get(route::route_json).layer(cors))
        .route("/v1/connect/{user}", get(route::connect))
        .route("/v1/{*rest}", any(route::api))
        .with_state(state.clone())
        .merge(chat_service::admin::routes(state, metrics.clone()))
        .merge(web::routes(&cfg.web, dev_secret, cfg.router.max_id_bytes));
    if cfg.web.dev_token_secret_file.is_some() {
        tracing::warn!("web.dev_token_secret_file is set: anyone can get a token for any user (development only)");
    }
    let listener = tokio::net::TcpListener::bind(cfg.router.listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = chat_service::signal::shutdown();
    match tls_acceptor(&cfg.router)? {
        Some(acceptor) => {
            let wait = std::time::Duration::from_millis(cfg.router.tls_handshake_timeout_ms);
            let listener = chat_service::tls::TlsListener::new(listener, acceptor, wait);
            ready_line("https", addr);
            chat_service::admin::serve(listener, app, metrics, shutdown).await?;
        }
        None => {
            ready_line("http", addr);
            chat_service::admin::serve(listener, app, metrics, shutdown).await?;
        }
    }
    Ok(())
}

/// One line on stdout for scripts and tests that start the router with port 0.
fn ready_line(scheme: &str, addr: SocketAddr) {
    println!("chat-router ready {scheme}://{addr}");
    tracing::info!(%addr, scheme, "routing");
}

fn tls_acceptor(r: &RouterSection) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    if r.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let (cert, key) = (Path::new(&r.tls_cert_file), Path::new(&r.tls_key_file));
    chat_service::tls::acceptor(cert, key, "router.tls")
        .map(Some)
        .map_err(|e| anyhow::anyhow!(e))
}
