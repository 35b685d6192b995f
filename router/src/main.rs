//! `chat-router`: tells a client which node is its home. Stateless: it watches the ring and the
//! registered nodes in etcd and answers from memory, so any number can run, and it is never in
//! the message path. When etcd is unreachable it keeps answering from the last ring it saw.
//!
//! - `GET /v1/route/{user}`: `{"user", "node", "url", "epoch"}` as JSON;
//! - `GET /v1/connect/{user}`: `307` to the home node's WebSocket URL (WebSocket clients follow);
//! - any other `/v1/...` (the nodes' HTTP API): `307` to the same path on the home node of the
//!   bearer token's user (the node checks the token; the router only reads its `sub`);
//! - `GET /healthz`, `GET /readyz` (ring loaded), `GET /metrics` (Prometheus).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
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
    anyhow::ensure!(
        (1..=1024).contains(&cfg.router.max_id_bytes),
        "router.max_id_bytes must be 1 to 1024 (as the nodes' limits.max_id_bytes)"
    );
    cfg.cluster.check("cluster")?;
    Ok(cfg)
}

struct AppState {
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

/// An HTTP API request: to the same path and query on the token user's home node. The API's
/// error form (`{"code", "message"}`), as the nodes answer it.
async fn api(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let refuse = |status: StatusCode, code: &str, message: String| {
        let body = serde_json::json!({ "code": code, "message": message });
        (status, Json(body)).into_response()
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        let m = "send the user's token as Authorization: Bearer <token>".to_string();
        return refuse(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", m);
    };
    let Some(user) = chat_auth::token_subject(token.trim()) else {
        let m = "the token names no user".to_string();
        return refuse(StatusCode::UNAUTHORIZED, "TOKEN_INVALID", m);
    };
    let r = route(&state, &user).and_then(|a| {
        let v = state.view.borrow();
        match v.node(&a.node) {
            Some(info) if !info.http_url.is_empty() => Ok(info.http_url.clone()),
            _ => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("home node {} has no HTTP listener registered", a.node),
            )),
        }
    });
    metrics::counter!("chat_router_requests_total", "route" => "api", "ok" => r.is_ok().to_string())
        .increment(1);
    match r {
        Ok(base) => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let to = format!("{base}{path}");
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
        // The token's user is not a valid id: the token is bad (as the node would say).
        Err((status, m)) if status == StatusCode::BAD_REQUEST => {
            refuse(StatusCode::UNAUTHORIZED, "TOKEN_INVALID", m)
        }
        Err((status, m)) => refuse(status, "UNAVAILABLE", m),
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
    let app = Router::new()
        .route("/v1/route/{user}", get(route_json))
        .route("/v1/connect/{user}", get(connect))
        .route("/v1/{*rest}", any(api))
        .with_state(state.clone())
        .merge(chat_service::admin::routes(state, metrics.clone()));
    let listener = tokio::net::TcpListener::bind(cfg.router.listen).await?;
    let addr = listener.local_addr()?;
    // One line on stdout for scripts and tests that start the router with port 0.
    println!("chat-router ready http://{addr}");
    tracing::info!(%addr, "routing");
    chat_service::admin::serve(listener, app, metrics, chat_service::signal::shutdown()).await?;
    Ok(())
}
