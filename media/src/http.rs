//! The embedded store's two routes, mounted on the node's HTTP listener:
//! `PUT /media/{id}?exp&size&sha256&sig` stores a blob, `GET /media/{id}?exp&ct&sig` serves it.
//! The signed query is the whole authorization (see [`crate::signing`]). A refusal is JSON,
//! `{"code": "...", "message": "..."}`, with the protocol's error code names.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::id::MediaId;
use crate::local::LocalBlobs;
use crate::signing::{Action, Claim, UrlError, UrlSigner};
use crate::BlobError;

/// What the routes need: the blobs and the cluster's URL key.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub blobs: LocalBlobs,
    pub signer: UrlSigner,
}

pub fn routes(store: Arc<Embedded>) -> Router {
    Router::new()
        .route("/media/{id}", get(download).put(upload))
        .with_state(store)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn refuse(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "code": code, "message": message.to_string() });
    (status, axum::Json(body)).into_response()
}

fn url_refusal(e: UrlError) -> Response {
    match e {
        UrlError::Expired => refuse(StatusCode::FORBIDDEN, "URL_EXPIRED", e),
        UrlError::BadSignature => refuse(StatusCode::FORBIDDEN, "URL_INVALID", e),
        UrlError::Malformed(_) => refuse(StatusCode::BAD_REQUEST, "URL_INVALID", e),
    }
}

/// The media id of a request and the claim of its signed query, or the refusal to send.
fn authorize(
    store: &Embedded,
    id: &str,
    put: bool,
    query: Option<String>,
) -> Result<(MediaId, Claim), Box<Response>> {
    let id = MediaId::parse(id).ok_or_else(|| {
        Box::new(refuse(
            StatusCode::NOT_FOUND,
            "UNKNOWN_MEDIA",
            "no such media id",
        ))
    })?;
    let claim = store
        .signer
        .verify(&id, put, query.as_deref().unwrap_or(""), now_ms())
        .map_err(|e| Box::new(url_refusal(e)))?;
    Ok((id, claim))
}

async fn upload(
    State(store): State<Arc<Embedded>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (id, claim) = match authorize(&store, &id, true, query) {
        Ok(ok) => ok,
        Err(refused) => return *refused,
    };
    let Action::Put { size, sha256 } = claim.action else {
        return refuse(StatusCode::BAD_REQUEST, "URL_INVALID", "not an upload URL");
    };
    // A declared length over the slot is refused before a byte is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > size) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MEDIA_TOO_LARGE",
            BlobError::TooLarge { limit: size },
        );
    }
    match store
        .blobs
        .put(&id, size, sha256, body.into_data_stream())
        .await
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e @ BlobError::TooLarge { .. }) => {
            refuse(StatusCode::PAYLOAD_TOO_LARGE, "MEDIA_TOO_LARGE", e)
        }
        Err(e @ (BlobError::SizeMismatch { .. } | BlobError::DigestMismatch)) => {
            refuse(StatusCode::BAD_REQUEST, "MEDIA_MISMATCH", e)
        }
        Err(e @ BlobError::Body(_)) => refuse(StatusCode::BAD_REQUEST, "BAD_REQUEST", e),
        Err(BlobError::Io(e)) => {
            tracing::error!(media = %id, error = %e, "storing an upload failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "the blob could not be stored",
            )
        }
    }
}

async fn download(
    State(store): State<Arc<Embedded>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let (id, claim) = match authorize(&store, &id, false, query) {
        Ok(ok) => ok,
        Err(refused) => return *refused,
    };
    let left_s = claim.expires_ms.saturating_sub(now_ms()) / 1000;
    let Action::Get { content_type } = claim.action else {
        return refuse(StatusCode::BAD_REQUEST, "URL_INVALID", "not a download URL");
    };
    let (file, len) = match store.blobs.open_blob(&id).await {
        Ok(Some(f)) => f,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "UNKNOWN_MEDIA", "no such media"),
        Err(e) => {
            tracing::error!(media = %id, error = %e, "reading a blob failed");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "the blob could not be read",
            );
        }
    };
    let ct = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ct),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            // Served bytes are whatever a user uploaded: never let a browser guess a type.
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // Cached no longer than the URL is good.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_str(&format!("private, max-age={}", left_s.min(300)))
                    .expect("digits"),
            ),
            // A type such as text/html or image/svg+xml would run a user's script on this
            // node's origin if opened directly: never as an active document.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox; default-src 'none'"),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Digest;
    use crate::signing::Claim;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>, Option<String>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec(), ct)
    }

    #[tokio::test]
    async fn put_then_get_through_signed_urls_and_every_refusal_has_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let signer = UrlSigner::new(&[9u8; 32]).unwrap();
        let app = routes(Arc::new(Embedded {
            blobs: LocalBlobs::open(dir.path()).await.unwrap(),
            signer: signer.clone(),
        }));
        let data = vec![42u8; 300_000];
        let id = MediaId::generate();
        let later = now_ms() + 60_000;
        let put = |size: u64, sha256: Digest, expires_ms: u64| {
            format!(
                "/media/{id}?{}",
                signer.query(&Claim {
                    media: id.clone(),
                    action: Action::Put { size, sha256 },
                    expires_ms,
                })
            )
        };
        let get_url = format!(
            "/media/{id}?{}",
            signer.query(&Claim {
                media: id.clone(),
                action: Action::Get {
                    content_type: "image/png".into()
                },
                expires_ms: later,
            })
        );
        let good = put(data.len() as u64, Digest::of(&data), later);
        let code = |b: &[u8]| String::from_utf8_lossy(b).to_string();

        let (s, b, _) = call(&app, "GET", &get_url, vec![]).await;
        assert_eq!(
            (s, code(&b).contains("UNKNOWN_MEDIA")),
            (StatusCode::NOT_FOUND, true)
        );
        let (s, b, _) = call(&app, "PUT", &good, data[..1000].to_vec()).await;
        assert_eq!(
            (s, code(&b).contains("MEDIA_MISMATCH")),
            (StatusCode::BAD_REQUEST, true)
        );
        let mut more = data.clone();
        more.push(1);
        let (s, b, _) = call(&app, "PUT", &good, more).await;
        assert_eq!(
            (s, code(&b).contains("MEDIA_TOO_LARGE")),
            (StatusCode::PAYLOAD_TOO_LARGE, true)
        );
        // A declared length over the slot: refused before the body is read.
        let req = Request::builder()
            .method("PUT")
            .uri(&good)
            .header(header::CONTENT_LENGTH, "300001")
            .body(Body::from(vec![0u8; 10]))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let (s, b, _) = call(
            &app,
            "PUT",
            &put(1, Digest::of(b"x"), now_ms() - 1),
            b"x".to_vec(),
        )
        .await;
        assert_eq!(
            (s, code(&b).contains("URL_EXPIRED")),
            (StatusCode::FORBIDDEN, true)
        );
        let tampered = good.replace("size=300000", "size=300001");
        let (s, b, _) = call(&app, "PUT", &tampered, data.clone()).await;
        assert_eq!(
            (s, code(&b).contains("URL_INVALID")),
            (StatusCode::FORBIDDEN, true)
        );
        // A download URL cannot upload.
        let (s, _, _) = call(&app, "PUT", &get_url, data.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = call(&app, "PUT", "/media/..%2F..%2Fetc?exp=1", data.clone()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        let (s, _, _) = call(&app, "PUT", &good, data.clone()).await;
        assert_eq!(s, StatusCode::OK);
        let (s, b, ct) = call(&app, "GET", &get_url, vec![]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some("image/png"));
        assert!(b == data, "the bytes back are the bytes put");
        // An upload URL does not download.
        let (s, _, _) = call(&app, "GET", &good, vec![]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
}
