//! Who is asking: the bearer token of an HTTP API request, checked as a connection's Hello is,
//! and whether this node is the user's home. A request for a user served elsewhere is answered
//! with `307` to the same path on its home node (as a WebSocket gets a Redirect).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_auth::Identity;

use crate::admin;
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::routing::Route;

/// The user (and device) an API request is made as, served here.
pub struct Caller(pub Identity);

impl FromRequestParts<Arc<NodeContext>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<NodeContext>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                let e = ChatError::Unauthenticated;
                let mut r = e.into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            })?;
        let who = ctx
            .verifier
            .verify(token.trim())
            .map_err(|e| ChatError::from(e).into_response())?;
        match ctx.routing.route(&who.user) {
            Route::Here => Ok(Caller(who)),
            Route::Elsewhere { http_url, .. } if !http_url.is_empty() => {
                metrics::counter!(admin::REDIRECTS).increment(1);
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let to = format!("{http_url}{path}");
                Err((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response())
            }
            Route::Elsewhere { .. } => Err(ChatError::Unavailable(
                "the user's home node has no HTTP listener registered".into(),
            )
            .into_response()),
            Route::Unavailable(why) => Err(ChatError::Unavailable(why).into_response()),
        }
    }
}
