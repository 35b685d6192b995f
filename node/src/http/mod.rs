//! The client HTTP listener: the HTTP API ([`api`], as the user of a bearer token, [`auth`]) and
//! the embedded blob store's signed media routes (`chat_media::http`), for the bytes that never
//! go through the WebSocket. Anything else is a JSON 404.

mod api;
mod auth;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::context::NodeContext;

pub fn routes(ctx: Arc<NodeContext>) -> Router {
    // An API body is a small JSON document: no larger than a WebSocket frame.
    let limit = ctx.cfg.limits.max_frame_bytes as usize;
    let media = match &ctx.media.embedded {
        Some(e) => chat_media::http::routes(e.clone()),
        None => Router::new(),
    };
    let cors = cors(&ctx.cfg.http.allow_origins);
    let app = api::routes(ctx)
        .layer(DefaultBodyLimit::max(limit))
        .merge(media)
        .fallback(|| async {
            let body = serde_json::json!({ "code": "NOT_FOUND", "message": "no such route" });
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        });
    match cors {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

/// Lets pages from `origins` (checked by the config: `*` or `scheme://host[:port]`) call the API
/// and the media URLs. The preflight is answered here; credentials (cookies) are never allowed,
/// as none are used.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::PUT, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Serves until `shutdown`; requests in progress finish first. With `tls`
/// (`http.tls_cert_file`), every connection speaks TLS, its handshake within
/// `client.hello_timeout_ms`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<NodeContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::serve::ListenerExt;
    let wait = std::time::Duration::from_millis(ctx.cfg.client.hello_timeout_ms);
    let app = routes(ctx);
    let r = match tls {
        Some(acceptor) => {
            let listener = chat_service::tls::TlsListener::new(listener, acceptor, wait);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            // Without it a response's last segment waits for the client's delayed ACK (40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "client HTTP listener failed");
    }
}
