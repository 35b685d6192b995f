//! Client tokens: HS256 JWTs whose `sub` is the user id and whose `dev` claim is the device.
//! The node verifies them; `chatctl`, the bench and the tests issue them, without linking the
//! node (and its storage engine).

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Who is on the other end of a connection, as proven by its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: String,
    pub device: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    dev: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
}

/// Checks tokens against the cluster secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_id_bytes: usize,
}

impl Verifier {
    pub fn new(secret: &[u8], leeway_secs: u64, max_id_bytes: usize) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        // A token whose `nbf` (not before) is still in the future is refused (RFC 7519 §4.1.5).
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
            max_id_bytes,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => {
                    AuthError::Invalid("token not valid yet (nbf is in the future)".into())
                }
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let c = data.claims;
        for (what, id) in [("user id", &c.sub), ("device id", &c.dev)] {
            if let Some(reason) = chat_proto::ids::id_problem(id, self.max_id_bytes) {
                return Err(AuthError::Invalid(format!("invalid {what}: {reason}")));
            }
        }
        Ok(Identity {
            user: c.sub,
            device: c.dev,
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Issues a token valid for `ttl_secs` (development and tests; production apps mint their own).
pub fn issue_token(secret: &[u8], user: &str, device: &str, ttl_secs: u64) -> String {
    issue_token_expiring(secret, user, device, unix_now() + ttl_secs)
}

/// Issues a token that expires at `exp` (Unix seconds), which may be in the past.
pub fn issue_token_expiring(secret: &[u8], user: &str, device: &str, exp: u64) -> String {
    let claims = Claims {
        sub: user.to_string(),
        dev: device.to_string(),
        iat: unix_now().min(exp),
        exp,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify() {
        let v = Verifier::new(b"s3cret", 0, 64);
        let t = issue_token(b"s3cret", "alice", "phone", 60);
        assert_eq!(
            v.verify(&t).unwrap(),
            Identity {
                user: "alice".into(),
                device: "phone".into()
            }
        );
    }

    #[test]
    fn wrong_secret_expired_and_garbage_are_refused() {
        let v = Verifier::new(b"s3cret", 0, 64);
        let t = issue_token(b"other", "alice", "phone", 60);
        assert!(matches!(v.verify(&t), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("xyz"), Err(AuthError::Invalid(_))));
        let mut claims = Claims {
            sub: "alice".into(),
            dev: "phone".into(),
            exp: 1_000,
            iat: 0,
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(matches!(v.verify(&old), Err(AuthError::Expired)));
        claims.exp = u64::MAX / 2;
        claims.sub = "bad user\n".into();
        let bad_id = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(matches!(v.verify(&bad_id), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let v = Verifier::new(b"s3cret", 5, 64);
        let sign = |nbf: u64| {
            let claims = serde_json::json!({
                "sub": "alice", "dev": "phone", "exp": unix_now() + 3600, "nbf": nbf,
            });
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        match v.verify(&sign(unix_now() + 600)) {
            Err(AuthError::Invalid(m)) => assert!(m.contains("not valid yet"), "{m}"),
            other => panic!("a token valid only in 10 minutes was {other:?}"),
        }
        // Within the leeway, and in the past: accepted.
        assert!(v.verify(&sign(unix_now() + 2)).is_ok());
        assert!(v.verify(&sign(unix_now() - 60)).is_ok());
    }
}

/// The user a token names, read without checking it: for routing a request to the user's home
/// node, which checks the token itself.
pub fn token_subject(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod subject_tests {
    #[test]
    fn the_subject_is_read_without_verifying() {
        // {"alg":"HS256"}.{"sub":"alice","dev":"d"}.sig
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImRldiI6ImQifQ.x";
        assert_eq!(super::token_subject(t).as_deref(), Some("alice"));
        assert_eq!(super::token_subject("garbage"), None);
    }
}
