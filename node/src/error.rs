//! The node's error type, and the one place that maps errors to wire error codes.

use chat_proto::cluster::PeerErrorCode;
use chat_proto::v1::{server_frame, Error as ErrorFrame, ErrorCode, ServerFrame};

use crate::rebalance::MoveError;
use crate::store::engine::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("malformed frame: {0}")]
    BadFrame(String),
    #[error("unknown frame kind: {0}")]
    UnknownFrame(String),
    #[error("frame of {size} bytes is over the limit of {max}")]
    FrameTooLarge { size: usize, max: usize },
    #[error("send a hello frame with a token first")]
    Unauthenticated,
    #[error("invalid token: {0}")]
    TokenInvalid(String),
    #[error("token expired")]
    TokenExpired,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("invalid {what}: {reason}")]
    InvalidId { what: &'static str, reason: String },
    #[error("message body is empty")]
    BodyEmpty,
    #[error("message body of {size} bytes is over the limit of {max}")]
    BodyTooLarge { size: usize, max: usize },
    #[error("user already has {max} devices (the limit); devices unseen for the retention period are forgotten")]
    TooManyDevices { max: u32 },
    #[error("this connection is already authenticated")]
    AlreadyAuthenticated,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("{0}")]
    Blocked(String),
    #[error("limit reached: {0}")]
    LimitReached(String),
    #[error("unknown group {0}")]
    UnknownGroup(String),
    #[error("not a member of group {0}")]
    NotAMember(String),
    #[error("only an admin of group {0} may do this")]
    NotAnAdmin(String),
    /// No file the user may fetch or attach has this id (the same words whatever the reason,
    /// so that ids cannot be probed).
    #[error("unknown media: {0}")]
    UnknownMedia(String),
    #[error("media too large: {0}")]
    MediaTooLarge(String),
    #[error("media mismatch: {0}")]
    MediaMismatch(String),
    #[error("media type: {0}")]
    MediaType(String),
    /// The answer of the node that owns a group, for the user as it is (a group call made on
    /// another node: `crate::groups`).
    #[error("{}", .0.message)]
    Relayed(chat_proto::v1::Error),
    /// Over a rate limit (`crate::rate`): nothing was done; the hint is the exact wait.
    #[error("over the {what} rate limit of {per_min} a minute; retry in {retry_after_ms} ms")]
    RateLimited {
        what: &'static str,
        per_min: u32,
        retry_after_ms: u64,
    },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Storage(StorageError),
    /// A move's request refused (peers only; never a client's answer).
    #[error("{0}")]
    Move(#[from] MoveError),
    /// A write failed because the disk is full: nothing of it was stored.
    #[error("the node's disk is full: {0}")]
    StorageFull(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The node's exit code when RocksDB stops taking writes (an I/O error such as ENOSPC while
/// writing its log): the node stops at once rather than serve a store it cannot write to, and
/// its supervisor restarts it; on restart RocksDB replays its write-ahead log (sysexits EX_IOERR).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// How long a client should wait before retrying after OVERLOADED or SHUTTING_DOWN.
const RETRY_AFTER_MS: u32 = 1_000;

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        use ChatError::*;
        match self {
            BadFrame(_) => ErrorCode::BadFrame,
            UnknownFrame(_) => ErrorCode::UnknownFrame,
            FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Unauthenticated => ErrorCode::Unauthenticated,
            TokenInvalid(_) => ErrorCode::TokenInvalid,
            TokenExpired => ErrorCode::TokenExpired,
            PermissionDenied(_) => ErrorCode::PermissionDenied,
            InvalidId { .. } => ErrorCode::InvalidId,
            BodyEmpty => ErrorCode::BodyEmpty,
            BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            TooManyDevices { .. } => ErrorCode::TooManyDevices,
            AlreadyAuthenticated => ErrorCode::AlreadyAuthenticated,
            InvalidArgument(_) => ErrorCode::InvalidArgument,
            Overloaded(_) => ErrorCode::Overloaded,
            RateLimited { .. } => ErrorCode::RateLimited,
            Blocked(_) => ErrorCode::Blocked,
            LimitReached(_) => ErrorCode::LimitReached,
            UnknownGroup(_) => ErrorCode::UnknownGroup,
            NotAMember(_) => ErrorCode::NotAMember,
            NotAnAdmin(_) => ErrorCode::NotAnAdmin,
            UnknownMedia(_) => ErrorCode::UnknownMedia,
            MediaTooLarge(_) => ErrorCode::MediaTooLarge,
            MediaMismatch(_) => ErrorCode::MediaMismatch,
            MediaType(_) => ErrorCode::MediaType,
            Relayed(e) => ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            ShuttingDown => ErrorCode::ShuttingDown,
            Unavailable(_) => ErrorCode::Unavailable,
            StorageFull(_) => ErrorCode::StorageFull,
            Move(_) => ErrorCode::Unavailable,
            Storage(_) | Internal(_) => ErrorCode::Internal,
        }
    }

    /// The code a peer receives when its request fails here.
    pub fn peer_code(&self) -> PeerErrorCode {
        use ChatError::*;
        match self {
            Move(MoveError::NotYet(_) | MoveError::NotInFlight(_)) | Unavailable(_) => {
                PeerErrorCode::NotYet
            }
            Move(MoveError::OutOfRange(_)) => PeerErrorCode::OutOfRange,
            InvalidArgument(_) | InvalidId { .. } => PeerErrorCode::OutOfRange,
            BadFrame(_)
            | UnknownFrame(_)
            | FrameTooLarge { .. }
            | Blocked(_)
            | LimitReached(_)
            | UnknownGroup(_)
            | NotAMember(_)
            | NotAnAdmin(_)
            | UnknownMedia(_)
            | MediaTooLarge(_)
            | MediaMismatch(_)
            | MediaType(_)
            | Relayed(_) => PeerErrorCode::BadRequest,
            Overloaded(_) | StorageFull(_) | RateLimited { .. } => PeerErrorCode::Overloaded,
            ShuttingDown => PeerErrorCode::ShuttingDown,
            _ => PeerErrorCode::Internal,
        }
    }

    /// The error frame a client receives. Internal details stay in the node's log.
    pub fn to_frame(&self, reference: &str) -> ServerFrame {
        if let ChatError::Relayed(e) = self {
            let mut e = e.clone();
            e.r#ref = reference.to_string();
            return ServerFrame {
                frame: Some(server_frame::Frame::Error(e)),
            };
        }
        let message = match self {
            ChatError::Storage(_) | ChatError::Internal(_) => "internal error".to_string(),
            ChatError::StorageFull(_) => {
                "the node's disk is full: nothing was stored; retry later".to_string()
            }
            other => other.to_string(),
        };
        let retry_after_ms = match self {
            ChatError::Overloaded(_)
            | ChatError::ShuttingDown
            | ChatError::Unavailable(_)
            | ChatError::Move(_)
            | ChatError::StorageFull(_) => RETRY_AFTER_MS,
            ChatError::RateLimited { retry_after_ms, .. } => {
                u32::try_from(*retry_after_ms).unwrap_or(u32::MAX).max(1)
            }
            _ => 0,
        };
        ServerFrame {
            frame: Some(server_frame::Frame::Error(ErrorFrame {
                code: self.code() as i32,
                message,
                r#ref: reference.to_string(),
                retry_after_ms,
            })),
        }
    }
}

/// The HTTP status of an error code, for the HTTP API (`crate::http`); the body carries the
/// code itself, the same as the WebSocket's.
pub fn http_status(code: ErrorCode) -> u16 {
    use ErrorCode::*;
    match code {
        Unauthenticated | TokenInvalid | TokenExpired => 401,
        PermissionDenied | Blocked | NotAMember | NotAnAdmin | UrlInvalid | UrlExpired => 403,
        UnknownGroup | UnknownMedia => 404,
        TooManyDevices | LimitReached => 409,
        FrameTooLarge | BodyTooLarge | MediaTooLarge => 413,
        MediaType => 415,
        RateLimited => 429,
        Internal | Unspecified => 500,
        Overloaded | ShuttingDown | Unavailable => 503,
        StorageFull => 507,
        BadFrame | UnknownFrame | InvalidId | BodyEmpty | AlreadyAuthenticated
        | InvalidArgument | MediaMismatch => 400,
    }
}

/// An HTTP API refusal: the status of its code, `{"code", "message", "retryAfterMs"}` (the
/// code's name without its `ERROR_CODE_` prefix, as the embedded media store's routes answer),
/// and `Retry-After` when the client should retry.
impl axum::response::IntoResponse for ChatError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        if self.is_internal() {
            tracing::warn!(error = %self, "HTTP request failed");
        }
        let Some(server_frame::Frame::Error(e)) = self.to_frame("").frame else {
            unreachable!("to_frame makes an error frame");
        };
        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
        let name = code.as_str_name().trim_start_matches("ERROR_CODE_");
        let mut body = serde_json::json!({ "code": name, "message": e.message });
        if e.retry_after_ms > 0 {
            body["retryAfterMs"] = e.retry_after_ms.into();
        }
        let status = StatusCode::from_u16(http_status(code)).expect("a valid status");
        let mut resp = (status, axum::Json(body)).into_response();
        if e.retry_after_ms > 0 {
            let secs = e.retry_after_ms.div_ceil(1000);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl ChatError {
    /// Whether this error points at a fault of the node (logged as a warning) rather than at
    /// the request or a refusal the client is told to retry (logged at debug level).
    pub fn is_internal(&self) -> bool {
        matches!(self, ChatError::Storage(_) | ChatError::Internal(_))
    }
}

/// STORAGE_FULL when the disk is full (a write refused below the free-space floor), else
/// INTERNAL with the details in the node's log only.
impl From<StorageError> for ChatError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Full(m) => ChatError::StorageFull(m),
            other => ChatError::Storage(other),
        }
    }
}

impl From<chat_media::SlotError> for ChatError {
    fn from(e: chat_media::SlotError) -> Self {
        use chat_media::SlotError::*;
        match e {
            TooLarge { .. } => ChatError::MediaTooLarge(e.to_string()),
            BadType(_) | TypeNotAllowed(_) => ChatError::MediaType(e.to_string()),
            Empty | BadDigest => ChatError::InvalidArgument(e.to_string()),
        }
    }
}

/// The blob store did not answer (S3 down, a disk error): the client may retry; the details
/// stay in the node's log.
impl From<chat_media::StoreError> for ChatError {
    fn from(e: chat_media::StoreError) -> Self {
        tracing::warn!(error = %e, "blob store");
        ChatError::Unavailable("the blob store did not answer; retry".into())
    }
}

impl From<chat_auth::AuthError> for ChatError {
    fn from(e: chat_auth::AuthError) -> Self {
        match e {
            chat_auth::AuthError::Expired => ChatError::TokenExpired,
            chat_auth::AuthError::Invalid(m) => ChatError::TokenInvalid(m),
        }
    }
}

impl From<chat_proto::DecodeError> for ChatError {
    fn from(e: chat_proto::DecodeError) -> Self {
        match e {
            chat_proto::DecodeError::Malformed(m) => ChatError::BadFrame(m),
            chat_proto::DecodeError::Unknown(k) => ChatError::UnknownFrame(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer can tell "not yet" (retry quietly) from a request outside the move, a bad
    /// request, load, shutdown and a fault; storage details stay in the message only.
    #[test]
    fn peer_codes_say_what_the_sender_can_do() {
        let cases = [
            (
                MoveError::NotYet("no move to epoch 3 here (yet)".into()).into(),
                PeerErrorCode::NotYet,
            ),
            (
                MoveError::OutOfRange("a write".into()).into(),
                PeerErrorCode::OutOfRange,
            ),
            (
                ChatError::InvalidId {
                    what: "recipient",
                    reason: "empty".into(),
                },
                PeerErrorCode::OutOfRange,
            ),
            (
                ChatError::BadFrame("10001 entries".into()),
                PeerErrorCode::BadRequest,
            ),
            (
                ChatError::StorageFull("below the floor".into()),
                PeerErrorCode::Overloaded,
            ),
            (ChatError::ShuttingDown, PeerErrorCode::ShuttingDown),
            (
                ChatError::Internal("commit failed".into()),
                PeerErrorCode::Internal,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.peer_code(), code, "{e}");
        }
    }
}
