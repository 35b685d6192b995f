//! Storage key layout. Every key begins with the ring hash of the user that owns the record
//! (BRIEF §4), so one ring segment is one contiguous key range in every column family:
//!
//! ```text
//! owner prefix  = key_hash(user): u64 BE | len(user): u16 BE | user bytes
//! inbox         = owner prefix | seq: u64 BE                       -> ts header | InboxEntry
//! meta (user)   = owner prefix | 'u'                                -> UserState
//! meta (device) = owner prefix | 'd' | device bytes                 -> DeviceState
//! meta (block)  = owner prefix | 'b' | blocked user bytes           -> ts: i64 BE (when)
//! meta (seen)   = owner prefix | 'p'                                -> last seen: i64 BE
//! meta (prefs)  = owner prefix | 's'                                -> UserSettings
//! dedup         = owner prefix | len(device): u16 BE | device | client_msg_id -> ts header | SentRecord
//! dedup (fwd)   = owner prefix | 0xFFFF | entry id   -> ts header | seq: u64 BE (forwarded entries)
//! outbox        = out seq: u64 BE                    -> ForwardEntry
//! ```
//!
//! The outbox is the exception to the owner prefix: it is this node's queue of entries still to
//! hand to other nodes, in the order they were accepted, and it never moves with a ring segment.
//! A device id is at most 1024 bytes, so the 0xFFFF length marker cannot collide with a dedup key
//! of a device.
//!
//! The length before the user id keeps users whose ids share a prefix ("al", "alice") apart.
//! Values that expire carry an 8-byte big-endian millisecond timestamp first, so the retention
//! compaction filter can judge them without decoding protobuf.

use chat_ring::key_hash;

pub const USER_STATE_TAG: u8 = b'u';
pub const DEVICE_TAG: u8 = b'd';
pub const BLOCK_TAG: u8 = b'b';
pub const LAST_SEEN_TAG: u8 = b'p';
pub const SETTINGS_TAG: u8 = b's';

pub fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + owner.len() + 16);
    k.extend_from_slice(&key_hash(owner).to_be_bytes());
    k.extend_from_slice(&(owner.len() as u16).to_be_bytes());
    k.extend_from_slice(owner.as_bytes());
    k
}

/// The owner hash a key of a moving column family begins with (`None`: a key too short).
pub fn owner_hash(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

pub fn inbox_key(user: &str, seq: u64) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of an inbox key that begins with `prefix`.
pub fn inbox_seq(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

pub fn user_state_key(user: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.push(USER_STATE_TAG);
    k
}

pub fn device_prefix(user: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.push(DEVICE_TAG);
    k
}

pub fn device_key(user: &str, device: &str) -> Vec<u8> {
    let mut k = device_prefix(user);
    k.extend_from_slice(device.as_bytes());
    k
}

pub fn last_seen_key(user: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.push(LAST_SEEN_TAG);
    k
}

pub fn settings_key(user: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.push(SETTINGS_TAG);
    k
}

pub fn block_prefix(user: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.push(BLOCK_TAG);
    k
}

/// `user` has blocked `other`.
pub fn block_key(user: &str, other: &str) -> Vec<u8> {
    let mut k = block_prefix(user);
    k.extend_from_slice(other.as_bytes());
    k
}

pub fn dedup_key(user: &str, device: &str, client_msg_id: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.extend_from_slice(&(device.len() as u16).to_be_bytes());
    k.extend_from_slice(device.as_bytes());
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

/// Where a forwarded entry (message or receipt from another node) is remembered, so that a
/// retried forward is stored once.
pub fn forward_dedup_key(user: &str, entry_id: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.extend_from_slice(&u16::MAX.to_be_bytes());
    k.extend_from_slice(entry_id.as_bytes());
    k
}

pub fn outbox_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn outbox_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `ts_ms` header followed by the encoded record.
pub fn timed_value(ts_ms: i64, record: &impl prost::Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + record.encoded_len());
    v.extend_from_slice(&ts_ms.to_be_bytes());
    record.encode(&mut v).expect("Vec grows");
    v
}

/// Splits a timed value into its timestamp and the record bytes.
pub fn split_timed(value: &[u8]) -> Option<(i64, &[u8])> {
    if value.len() < 8 {
        return None;
    }
    let (ts, rest) = value.split_at(8);
    Some((i64::from_be_bytes(ts.try_into().ok()?), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_user_share_the_ring_hash_prefix_and_sort_by_seq() {
        let a = inbox_key("alice", 1);
        let b = inbox_key("alice", 256);
        assert_eq!(&a[..8], &key_hash("alice").to_be_bytes());
        assert!(a < b);
        assert_eq!(inbox_seq(&owner_prefix("alice"), &b), Some(256));
        for k in [
            user_state_key("alice"),
            device_key("alice", "d"),
            dedup_key("alice", "d", "c"),
            block_key("alice", "bob"),
            last_seen_key("alice"),
            settings_key("alice"),
        ] {
            assert!(k.starts_with(&owner_prefix("alice")));
        }
    }

    #[test]
    fn users_sharing_an_id_prefix_do_not_overlap() {
        assert!(!inbox_key("alice", 1).starts_with(&owner_prefix("al")));
        assert_eq!(inbox_seq(&owner_prefix("al"), &inbox_key("alice", 1)), None);
    }
}
