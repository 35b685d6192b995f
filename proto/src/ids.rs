//! The one rule for ids (users, devices, client_msg_ids), shared by the node, the router and
//! anything else that must accept or refuse an id the same way.

/// The default of the nodes' `limits.max_id_bytes` and the router's `router.max_id_bytes`.
pub const DEFAULT_MAX_ID_BYTES: usize = 64;

/// Why `id` is not a valid id of at most `max` bytes, or `None` if it is. Ids are printable
/// ASCII without spaces (letters, digits and `-_.:@+=/`), so they are safe in URLs, logs, JSON
/// and storage keys.
pub fn id_problem(id: &str, max: usize) -> Option<String> {
    if id.is_empty() {
        return Some("empty".into());
    }
    if id.len() > max {
        return Some(format!("{} bytes, the limit is {max}", id.len()));
    }
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@+=/".contains(*c)))
        .map(|c| format!("character {c:?} is not allowed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(id_problem("alice-1@x.org/phone", 64), None);
        assert_eq!(id_problem("", 64).as_deref(), Some("empty"));
        assert!(id_problem(&"a".repeat(65), 64)
            .unwrap()
            .contains("65 bytes"));
        assert_eq!(id_problem(&"a".repeat(64), 64), None);
        assert!(id_problem("a b", 64).unwrap().contains("' '"));
        assert!(id_problem("é", 64).is_some());
    }
}
