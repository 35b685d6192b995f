//! `chat-router`: tells a client which node is its home. Stateless: it watches the ring and the
//! registered nodes in etcd and answers from memory, so any number can run, and it is never in
//! the message path. When etcd is unreachable it keeps answering from the last ring it saw.
//!
//! - `GET /v1/route/{user}`: `{"user", "node", "url", "epoch"}` as JSON;
//! - `GET /v1/connect/{user}`: `307` to the home node's WebSocket URL (WebSocket clients follow);
//! - `GET /healthz`, `GET /readyz` (ring loaded), `GET /metrics` (Prometheus).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chat_cluster::{ClusterView, EtcdConfig};
use clap::Parser;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// The router's configuration: defaults, then the TOML file, then `CHAT_ROUTER_<SECTION>__<KEY>`,
/// then flags. Unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RouterConfig {
    router: RouterSection,
    cluster: ClusterSection,
    log: LogSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RouterSection {
    /// Address of the HTTP listener (port 0 picks a free port).
    listen: SocketAddr,
    /// Longest user id answered (400 beyond it): keep it equal to the nodes'
    /// `limits.max_id_bytes`, so the router never sends a client to a node that would refuse it.
    max_id_bytes: usize,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            listen: "127.0.0.1:7000".parse().expect("valid address"),
            max_id_bytes: chat_proto::ids::DEFAULT_MAX_ID_BYTES,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ClusterSection {
    /// etcd client URLs.
    etcd_endpoints: Vec<String>,
    /// Every etcd key of the cluster starts with this (the nodes' `cluster.prefix`).
    prefix: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/chat/".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LogSection {
    /// `tracing` env-filter directives (`RUST_LOG` wins when set).
    filter: String,
    /// `text` or `json`.
    format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            filter: "info".into(),
            format: "text".into(),
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
    /// Check the configuration, print it and exit.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> anyhow::Result<RouterConfig> {
    let mut fig = Figment::from(Serialized::defaults(RouterConfig::default()));
    if let Some(p) = &args.config {
        fig = fig.merge(Toml::file_exact(p));
    }
    fig = fig.merge(
        Env::prefixed("CHAT_ROUTER_")
            .split("__")
            .ignore(&["config"]),
    );
    let mut cfg: RouterConfig = fig.extract()?;
    if let Some(v) = args.listen {
        cfg.router.listen = v;
    }
    if let Some(v) = &args.etcd {
        cfg.cluster.etcd_endpoints = v.clone();
    }
    if let Some(v) = &args.prefix {
        cfg.cluster.prefix = v.clone();
    }
    anyhow::ensure!(
        (1..=1024).contains(&cfg.router.max_id_bytes),
        "router.max_id_bytes must be 1 to 1024 (as the nodes' limits.max_id_bytes)"
    );
    anyhow::ensure!(
        !cfg.cluster.etcd_endpoints.is_empty(),
        "cluster.etcd_endpoints must list at least one etcd URL"
    );
    anyhow::ensure!(
        cfg.cluster.prefix.starts_with('/') && cfg.cluster.prefix.ends_with('/'),
        "cluster.prefix must start and end with '/'"
    );
    anyhow::ensure!(
        matches!(cfg.log.format.as_str(), "text" | "json"),
        "log.format: text or json"
    );
    Ok(cfg)
}

struct AppState {
    view: watch::Receiver<ClusterView>,
    max_id_bytes: usize,
    metrics: PrometheusHandle,
}

#[derive(Serialize)]
struct RouteAnswer {
    user: String,
    node: String,
    url: String,
    epoch: u64,
}

#[derive(Serialize)]
struct ErrorAnswer {
    error: String,
}

/// Why a user cannot be routed: an HTTP status and a message for the JSON body.
type RouteError = (StatusCode, String);

fn error(status: StatusCode, msg: impl Into<String>) -> RouteError {
    (status, msg.into())
}

fn error_response((status, error): RouteError) -> Response {
    (status, Json(ErrorAnswer { error })).into_response()
}

fn route(state: &AppState, user: &str) -> Result<RouteAnswer, RouteError> {
    // The nodes' rule (`chat_proto::ids`), so both refuse the same ids.
    if let Some(why) = chat_proto::ids::id_problem(user, state.max_id_bytes) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("invalid user id {user:?}: {why}"),
        ));
    }
    let v = state.view.borrow();
    let Some(node) = v.owner(user) else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster has no ring yet",
        ));
    };
    let Some(info) = v.node(node) else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("home node {node} is not registered"),
        ));
    };
    Ok(RouteAnswer {
        user: user.to_string(),
        node: node.to_string(),
        url: info.client_url.clone(),
        epoch: v.epoch(),
    })
}

async fn route_json(State(state): State<Arc<AppState>>, Path(user): Path<String>) -> Response {
    let r = route(&state, &user);
    metrics::counter!("chat_router_requests_total", "route" => "route", "ok" => r.is_ok().to_string())
        .increment(1);
    match r {
        Ok(a) => Json(a).into_response(),
        Err(e) => error_response(e),
    }
}

async fn connect(State(state): State<Arc<AppState>>, Path(user): Path<String>) -> Response {
    let r = route(&state, &user);
    metrics::counter!("chat_router_requests_total", "route" => "connect", "ok" => r.is_ok().to_string())
        .increment(1);
    match r {
        Ok(a) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, a.url)]).into_response(),
        Err(e) => error_response(e),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.view.borrow().ring.is_some() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no ring\n")
    }
}

async fn render(State(state): State<Arc<AppState>>) -> String {
    let (up, epoch, nodes) = {
        let v = state.view.borrow();
        (v.etcd_up, v.epoch(), v.nodes.len())
    };
    metrics::gauge!("chat_etcd_up").set(if up { 1.0 } else { 0.0 });
    metrics::gauge!("chat_ring_epoch").set(epoch as f64);
    metrics::gauge!("chat_router_nodes").set(nodes as f64);
    state.metrics.render()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = load(&args).context("configuration")?;
    if args.check_config {
        println!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: RouterConfig) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let view = chat_cluster::watch(EtcdConfig {
        endpoints: cfg.cluster.etcd_endpoints.clone(),
        prefix: cfg.cluster.prefix.clone(),
    });
    let state = Arc::new(AppState {
        view,
        metrics,
        max_id_bytes: cfg.router.max_id_bytes,
    });
    let app = Router::new()
        .route("/v1/route/{user}", get(route_json))
        .route("/v1/connect/{user}", get(connect))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(cfg.router.listen).await?;
    let addr = listener.local_addr()?;
    // One line on stdout for scripts and tests that start the router with port 0.
    println!("chat-router ready http://{addr}");
    tracing::info!(%addr, "routing");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await?;
    Ok(())
}
