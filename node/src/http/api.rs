//! The HTTP API: what a client may ask outside the real-time WebSocket, as the same user (its
//! bearer token), answered by the same code as the WebSocket's requests, in the protocol's JSON
//! (lowerCamelCase, the `chat.v1` types) and with its error codes. `openapi.json` describes
//! every route; a test holds the two together.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chat_proto::v1::{
    group_reply, group_request, media_request, GroupInfo, GroupList, GroupRef, GroupRequest,
    HistoryPage, MediaDownload, MediaReply, MediaUpload, PresenceList, Settings,
};
use serde::Deserialize;

use super::auth::Caller;
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::gateway;
use crate::writer::SettingsChange;

/// The OpenAPI description of these routes, served as is.
pub const OPENAPI: &str = include_str!("openapi.json");

type Answer<T> = Result<Json<T>, ChatError>;

pub fn routes(ctx: Arc<NodeContext>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/history", get(history))
        .route("/v1/presence", get(presence))
        .route("/v1/groups", get(groups))
        .route("/v1/groups/{group}", get(group))
        .route("/v1/settings", get(settings).put(put_settings))
        .route("/v1/media/uploads", post(upload))
        .route("/v1/media/{media_id}", get(download))
        .with_state(ctx)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A query string or body that does not parse: the protocol's INVALID_ARGUMENT, in JSON.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ChatError> {
    q.map(|Query(t)| t)
        .map_err(|e| ChatError::InvalidArgument(e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ChatError> {
    b.map(|Json(t)| t)
        .map_err(|e| ChatError::InvalidArgument(e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HistoryQuery {
    #[serde(default)]
    before_seq: u64,
    #[serde(default)]
    limit: u32,
}

async fn history(
    State(ctx): State<Arc<NodeContext>>,
    Caller(who): Caller,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Answer<HistoryPage> {
    let q = query(q)?;
    let page = gateway::history_page(&ctx, &who.user, q.before_seq, q.limit).await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    /// Comma-separated user ids.
    users: String,
}

async fn presence(
    State(ctx): State<Arc<NodeContext>>,
    Caller(who): Caller,
    q: Result<Query<PresenceQuery>, QueryRejection>,
) -> Answer<PresenceList> {
    let q = query(q)?;
    let users = q.users.split(',').map(str::to_string).collect();
    let users = gateway::checked_users(&ctx, &who.user, users, ctx.presence.max_query())?;
    let statuses = ctx.presence.query(&who.user, &users).await;
    Ok(Json(PresenceList {
        request_id: String::new(),
        statuses,
    }))
}

async fn groups(State(ctx): State<Arc<NodeContext>>, Caller(who): Caller) -> Answer<GroupList> {
    let reply = gateway::my_groups(&ctx, who.user, "").await?;
    match reply.reply {
        Some(group_reply::Reply::Groups(g)) => Ok(Json(g)),
        _ => Err(ChatError::Internal("my groups answered otherwise".into())),
    }
}

async fn group(
    State(ctx): State<Arc<NodeContext>>,
    Caller(who): Caller,
    Path(group): Path<String>,
) -> Answer<GroupInfo> {
    let mut r = GroupRequest {
        request_id: String::new(),
        op: Some(group_request::Op::Info(GroupRef { group })),
    };
    match gateway::group_answer(&ctx, who, &mut r).await?.reply {
        Some(group_reply::Reply::Info(i)) => Ok(Json(i)),
        _ => Err(ChatError::Internal("group info answered otherwise".into())),
    }
}

async fn settings(State(ctx): State<Arc<NodeContext>>, Caller(who): Caller) -> Answer<Settings> {
    let store = ctx.store.clone();
    let s = tokio::task::spawn_blocking(move || store.settings(&who.user))
        .await
        .map_err(|e| ChatError::Internal(e.to_string()))??;
    Ok(Json(Settings {
        hide_last_seen: s.hide_last_seen,
        history_days: s.history_days,
    }))
}

async fn put_settings(
    State(ctx): State<Arc<NodeContext>>,
    Caller(who): Caller,
    b: Result<Json<Settings>, JsonRejection>,
) -> Answer<Settings> {
    let s = body(b)?;
    let max = ctx.cfg.max_history_days();
    if s.history_days.is_some_and(|d| d > max) {
        return Err(ChatError::InvalidArgument(format!(
            "historyDays is at most {max} (the cluster's retention)"
        )));
    }
    ctx.user_limits
        .check(&who.user, crate::rate::Limit::Presence)?;
    // A PUT replaces every setting.
    let change = SettingsChange {
        hide_last_seen: Some(s.hide_last_seen),
        history_days: Some(s.history_days),
    };
    ctx.writer.settings(who, change).await?;
    Ok(Json(s))
}

async fn upload(
    State(ctx): State<Arc<NodeContext>>,
    Caller(who): Caller,
    b: Result<Json<MediaUpload>, JsonRejection>,
) -> Result<(StatusCode, Json<MediaReply>), ChatError> {
    let u = body(b)?;
    let op = Some(media_request::Op::Upload(u));
    let reply = gateway::media_answer(&ctx, &who, op).await?;
    Ok((StatusCode::CREATED, Json(reply)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadQuery {
    #[serde(default)]
    seq: u64,
}

async fn download(
    State(ctx): State<Arc<NodeContext>>,
    Caller(who): Caller,
    Path(media_id): Path<String>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
) -> Answer<MediaReply> {
    let seq = query(q)?.seq;
    let op = Some(media_request::Op::Download(MediaDownload { media_id, seq }));
    Ok(Json(gateway::media_answer(&ctx, &who, op).await?))
}
