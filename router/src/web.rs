//! The web client: its static files (built from `web/app`) served from a directory, and, for
//! development only, tokens issued to whoever asks. Both are off unless configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

/// `[web]`: the browser client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Directory of the web client's built files (`web/app/dist`), served at `/`; unset: no web
    /// client.
    pub dir: Option<PathBuf>,
    /// DEVELOPMENT ONLY: a file holding the cluster's token secret. When set, `POST /dev/token`
    /// (`{"user","device"}`) issues a token for any user to anyone who asks, so a person trying
    /// the cluster can sign in from the page. Never set it on a cluster people use.
    pub dev_token_secret_file: Option<PathBuf>,
    /// Lifetime of a development token, in seconds.
    pub dev_token_ttl_secs: u64,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            dir: None,
            dev_token_secret_file: None,
            dev_token_ttl_secs: 24 * 3600,
        }
    }
}

impl WebSection {
    /// Checks the directory has the client's page and reads the secret, so a mistake stops the
    /// router at start instead of answering 404s.
    pub fn check(&self) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(dir) = &self.dir {
            anyhow::ensure!(
                dir.join("index.html").is_file(),
                "web.dir {}: no index.html (build the web client: cd web && npm ci && npm run build)",
                dir.display()
            );
        }
        anyhow::ensure!(
            (60..=30 * 24 * 3600).contains(&self.dev_token_ttl_secs),
            "web.dev_token_ttl_secs must be 60 to 2592000"
        );
        let Some(path) = &self.dev_token_secret_file else {
            return Ok(None);
        };
        let secret = read_secret(path)?;
        Ok(Some(secret))
    }
}

fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("web.dev_token_secret_file {}: {e}", path.display()))?;
    let s = s.trim();
    anyhow::ensure!(
        s.len() >= 16,
        "web.dev_token_secret_file {}: the secret must be at least 16 bytes (as the nodes')",
        path.display()
    );
    Ok(s.as_bytes().to_vec())
}

/// What the page may load: only its own files; it talks to any node (WebSocket, HTTP) and shows
/// images from the media URLs the nodes sign. No inline script, no third-party resource.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss: http: https:; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The routes of this module, merged into the router's app.
pub fn routes(cfg: &WebSection, secret: Option<Vec<u8>>, max_id_bytes: usize) -> Router {
    let mut app = Router::new();
    if let Some(secret) = secret {
        let state = Arc::new(DevTokens {
            secret,
            ttl_secs: cfg.dev_token_ttl_secs,
            max_id_bytes,
        });
        app = app.route("/dev/token", post(dev_token).with_state(state));
    }
    if let Some(dir) = &cfg.dir {
        let files = ServeDir::new(dir).append_index_html_on_directories(true);
        app = app
            .fallback_service(files)
            .layer(SetResponseHeaderLayer::if_not_present(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ));
    }
    app
}

struct DevTokens {
    secret: Vec<u8>,
    ttl_secs: u64,
    max_id_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    device: String,
}

#[derive(Serialize)]
struct TokenAnswer {
    token: String,
    user: String,
    device: String,
    expires_in_secs: u64,
}

async fn dev_token(
    State(dev): State<Arc<DevTokens>>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let refuse = |message: String| {
        let body = serde_json::json!({ "code": "INVALID_ARGUMENT", "message": message });
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return refuse(format!("expected {{\"user\", \"device\"}}: {e}")),
    };
    for (what, id) in [("user", &req.user), ("device", &req.device)] {
        if let Some(why) = chat_proto::ids::id_problem(id, dev.max_id_bytes) {
            return refuse(format!("invalid {what} id {id:?}: {why}"));
        }
    }
    metrics::counter!("chat_router_dev_tokens_total").increment(1);
    tracing::info!(user = %req.user, device = %req.device, "development token issued");
    let token = chat_auth::issue_token(&dev.secret, &req.user, &req.device, dev.ttl_secs);
    Json(TokenAnswer {
        token,
        user: req.user,
        device: req.device,
        expires_in_secs: dev.ttl_secs,
    })
    .into_response()
}
