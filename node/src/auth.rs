//! Client authentication: HS256 JWTs whose `sub` is the user id and whose `dev` claim is the device.

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ChatError;
use crate::validate::{check_id, IdKind};

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

    pub fn verify(&self, token: &str) -> Result<Identity, ChatError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => ChatError::TokenExpired,
                ErrorKind::ImmatureSignature => {
                    ChatError::TokenInvalid("token not valid yet (nbf is in the future)".into())
                }
                _ => ChatError::TokenInvalid(e.to_string()),
            },
        )?;
        let c = data.claims;
        let bad = |e: ChatError| ChatError::TokenInvalid(e.to_string());
        check_id(IdKind::User, &c.sub, self.max_id_bytes).map_err(bad)?;
        check_id(IdKind::Device, &c.dev, self.max_id_bytes).map_err(bad)?;
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
        assert!(matches!(v.verify(&t), Err(ChatError::TokenInvalid(_))));
        assert!(matches!(v.verify("xyz"), Err(ChatError::TokenInvalid(_))));
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
        assert!(matches!(v.verify(&old), Err(ChatError::TokenExpired)));
        claims.exp = u64::MAX / 2;
        claims.sub = "bad user\n".into();
        let bad_id = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(matches!(v.verify(&bad_id), Err(ChatError::TokenInvalid(_))));
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
            Err(ChatError::TokenInvalid(m)) => assert!(m.contains("not valid yet"), "{m}"),
            other => panic!("a token valid only in 10 minutes was {other:?}"),
        }
        // Within the leeway, and in the past: accepted.
        assert!(v.verify(&sign(unix_now() + 2)).is_ok());
        assert!(v.verify(&sign(unix_now() - 60)).is_ok());
    }
}
