//! Input checks shared by every path that accepts ids and bodies from clients.

use crate::error::ChatError;

#[derive(Debug, Clone, Copy)]
pub enum IdKind {
    User,
    Device,
    ClientMsgId,
    Recipient,
}

impl IdKind {
    fn name(self) -> &'static str {
        match self {
            IdKind::User => "user id",
            IdKind::Device => "device id",
            IdKind::ClientMsgId => "client_msg_id",
            IdKind::Recipient => "recipient",
        }
    }
}

/// Ids are 1..=max bytes of printable ASCII without spaces (letters, digits, and `-_.:@+=/`), so
/// that they are safe in URLs, logs, JSON and storage keys.
pub fn check_id(kind: IdKind, id: &str, max: usize) -> Result<(), ChatError> {
    let fail = |reason: String| {
        Err(ChatError::InvalidId {
            what: kind.name(),
            reason,
        })
    };
    if id.is_empty() {
        return fail("empty".into());
    }
    if id.len() > max {
        return fail(format!("{} bytes, the limit is {max}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@+=/".contains(*c)))
    {
        return fail(format!("character {c:?} is not allowed"));
    }
    Ok(())
}

pub fn check_body(body: &str, max: usize) -> Result<(), ChatError> {
    if body.is_empty() {
        return Err(ChatError::BodyEmpty);
    }
    if body.len() > max {
        return Err(ChatError::BodyTooLarge {
            size: body.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id(IdKind::User, "alice@example.com", 64).is_ok());
        assert!(check_id(IdKind::User, "", 64).is_err());
        assert!(check_id(IdKind::User, "a b", 64).is_err());
        assert!(check_id(IdKind::User, "é", 64).is_err());
        assert!(check_id(IdKind::User, &"x".repeat(65), 64).is_err());
        assert!(check_id(IdKind::User, &"x".repeat(64), 64).is_ok());
    }

    #[test]
    fn bodies() {
        assert!(matches!(check_body("", 10), Err(ChatError::BodyEmpty)));
        assert!(matches!(
            check_body("12345678901", 10),
            Err(ChatError::BodyTooLarge { size: 11, max: 10 })
        ));
        assert!(check_body("ok", 10).is_ok());
    }
}
