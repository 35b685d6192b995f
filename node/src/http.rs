//! The client HTTP listener: the embedded blob store's signed media routes (`chat_media::http`),
//! for the bytes that never go through the WebSocket. Anything else is a JSON 404.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use tokio::net::TcpListener;

use crate::media::Media;

pub fn routes(media: &Media) -> Router {
    let router = match &media.embedded {
        Some(e) => chat_media::http::routes(e.clone()),
        None => Router::new(),
    };
    router.fallback(|| async {
        let body = serde_json::json!({ "code": "NOT_FOUND", "message": "no such route" });
        (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
    })
}

/// Serves until `shutdown`; requests in progress finish first.
pub async fn serve(
    listener: TcpListener,
    media: Arc<Media>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = routes(&media);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "client HTTP listener failed");
    }
}
