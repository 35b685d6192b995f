//! Input checks shared by every path that accepts ids and bodies from clients.

use crate::error::ChatError;

#[derive(Debug, Clone, Copy)]
pub enum IdKind {
    ClientMsgId,
    Recipient,
    /// Another user named in a request (one to block).
    User,
    Group,
    MsgId,
}

impl IdKind {
    fn name(self) -> &'static str {
        match self {
            IdKind::ClientMsgId => "client_msg_id",
            IdKind::Recipient => "recipient",
            IdKind::User => "user id",
            IdKind::Group => "group id",
            IdKind::MsgId => "msg_id",
        }
    }
}

/// Ids follow the one rule in `chat_proto::ids` (1..=max bytes of `[A-Za-z0-9-_.:@+=/]`).
pub fn check_id(kind: IdKind, id: &str, max: usize) -> Result<(), ChatError> {
    match chat_proto::ids::id_problem(id, max) {
        None => Ok(()),
        Some(reason) => Err(ChatError::InvalidId {
            what: kind.name(),
            reason,
        }),
    }
}

/// A message's text: 1..=max bytes, or empty when the message carries an attachment (a
/// caption is optional).
pub fn check_body(body: &str, max: usize, attachment: bool) -> Result<(), ChatError> {
    if body.is_empty() && !attachment {
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
        assert!(check_id(IdKind::Recipient, "alice@example.com", 64).is_ok());
        assert!(check_id(IdKind::Recipient, "", 64).is_err());
        assert!(check_id(IdKind::Recipient, "a b", 64).is_err());
        assert!(check_id(IdKind::Recipient, "é", 64).is_err());
        assert!(check_id(IdKind::Recipient, &"x".repeat(65), 64).is_err());
        assert!(check_id(IdKind::Recipient, &"x".repeat(64), 64).is_ok());
    }

    #[test]
    fn bodies() {
        assert!(matches!(
            check_body("", 10, false),
            Err(ChatError::BodyEmpty)
        ));
        assert!(
            check_body("", 10, true).is_ok(),
            "an attachment needs no caption"
        );
        assert!(matches!(
            check_body("12345678901", 10, true),
            Err(ChatError::BodyTooLarge { size: 11, max: 10 })
        ));
        assert!(check_body("ok", 10, false).is_ok());
    }
}
