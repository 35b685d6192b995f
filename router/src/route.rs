//! Where a user lives: the route as JSON, the WebSocket redirect, and the HTTP API's redirect to
//! the token user's home node. Answered from the last ring seen in etcd.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::AppState;

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

pub(crate) async fn route_json(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Response {
    let r = route(&state, &user);
    metrics::counter!("chat_router_requests_total", "route" => "route", "ok" => r.is_ok().to_string())
        .increment(1);
    match r {
        Ok(a) => Json(a).into_response(),
        Err(e) => error_response(e),
    }
}

pub(crate) async fn connect(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Response {
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
pub(crate) async fn api(
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
