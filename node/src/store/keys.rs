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
//! meta (mine)   = owner prefix | 'G' | group id bytes               -> MyGroup
//! meta (group)  = group prefix | 'g'                                -> GroupState
//! meta (member) = group prefix | 'm' | user bytes                   -> GroupMemberRecord
//! dedup         = owner prefix | len(device): u16 BE | device | client_msg_id -> ts header | SentRecord
//! dedup (fwd)   = owner prefix | 0xFFFF | entry id   -> ts header | seq: u64 BE (forwarded entries)
//! dedup (gsend) = group prefix | 0xFFFD | len(user): u16 BE | user | len(device): u16 BE | device
//!                 | client_msg_id                    -> ts header | SentRecord (group sends)
//! dedup (upload)= owner prefix | 0xFFFC | media id                -> ts header | UploadRecord
//! dedup (tally) = group prefix | 0xFFFE | len(msg id): u8 | msg id | kind: u8 | member
//!                                                    -> ts header (a member received or read it)
//! outbox        = out seq: u64 BE                    -> ForwardEntry
//! ```
//!
//! The outbox is the exception to the owner prefix: it is this node's queue of entries still to
//! hand to other nodes, in the order they were accepted, and it never moves with a ring segment.
//! A device id is at most 1024 bytes, so the 0xFFFF length marker cannot collide with a dedup key
//! of a device.
//!
//! A group's records begin with the prefix of its id ("group prefix", the same function as a
//! user's), so they move with the group's ring segment. Group ids ("g-" and a UUID) are made
//! by nodes, and every group record has a tag or marker no user record has, so a user whose
//! id happens to equal a group's never shares a key with it.
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
pub const MY_GROUP_TAG: u8 = b'G';
pub const GROUP_TAG: u8 = b'g';
pub const MEMBER_TAG: u8 = b'm';
/// Dedup markers of group records, where a user's dedup key has its device length (at most
/// 1024): never a collision.
const GROUP_SEND_MARK: u16 = 0xFFFD;
/// An upload slot given to a user: a dedup record, so it expires with the retention.
const UPLOAD_MARK: u16 = 0xFFFC;
const TALLY_MARK: u16 = 0xFFFE;

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

/// The upload slot `media_id` given to `user` (what its bytes must be).
pub fn upload_key(user: &str, media_id: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.extend_from_slice(&UPLOAD_MARK.to_be_bytes());
    k.extend_from_slice(media_id.as_bytes());
    k
}

pub fn my_groups_prefix(user: &str) -> Vec<u8> {
    let mut k = owner_prefix(user);
    k.push(MY_GROUP_TAG);
    k
}

/// `user` is a member of `group` (as the user's home node knows from its events).
pub fn my_group_key(user: &str, group: &str) -> Vec<u8> {
    let mut k = my_groups_prefix(user);
    k.extend_from_slice(group.as_bytes());
    k
}

pub fn group_key(group: &str) -> Vec<u8> {
    let mut k = owner_prefix(group);
    k.push(GROUP_TAG);
    k
}

pub fn members_prefix(group: &str) -> Vec<u8> {
    let mut k = owner_prefix(group);
    k.push(MEMBER_TAG);
    k
}

pub fn member_key(group: &str, user: &str) -> Vec<u8> {
    let mut k = members_prefix(group);
    k.extend_from_slice(user.as_bytes());
    k
}

/// A group send's dedup record: a retry of (user, device, client_msg_id) gets the same ✓.
pub fn group_send_key(group: &str, user: &str, device: &str, client_msg_id: &str) -> Vec<u8> {
    let mut k = owner_prefix(group);
    k.extend_from_slice(&GROUP_SEND_MARK.to_be_bytes());
    for part in [user, device] {
        k.extend_from_slice(&(part.len() as u16).to_be_bytes());
        k.extend_from_slice(part.as_bytes());
    }
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

/// The tallies of one group message of one kind (delivered or read): one key per member.
pub fn tally_prefix(group: &str, msg_id: &str, kind: u8) -> Vec<u8> {
    let mut k = owner_prefix(group);
    k.extend_from_slice(&TALLY_MARK.to_be_bytes());
    let id = &msg_id.as_bytes()[..msg_id.len().min(u8::MAX as usize)];
    k.push(id.len() as u8);
    k.extend_from_slice(id);
    k.push(kind);
    k
}

pub fn tally_key(group: &str, msg_id: &str, kind: u8, member: &str) -> Vec<u8> {
    let mut k = tally_prefix(group, msg_id, kind);
    k.extend_from_slice(member.as_bytes());
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
            my_group_key("alice", "g-1"),
        ] {
            assert!(k.starts_with(&owner_prefix("alice")));
        }
    }

    #[test]
    fn group_records_never_meet_user_records_of_the_same_id() {
        let id = "g-1";
        let group = [
            group_key(id),
            member_key(id, "bob"),
            group_send_key(id, "bob", "phone", "c1"),
            tally_key(id, "m1", 1, "bob"),
        ];
        let user = [
            user_state_key(id),
            device_key(id, "phone"),
            block_key(id, "bob"),
            last_seen_key(id),
            settings_key(id),
            my_group_key(id, "g-2"),
            dedup_key(id, "phone", "c1"),
            forward_dedup_key(id, "m1"),
            upload_key(id, "m0190"),
            inbox_key(id, 1),
        ];
        for g in &group {
            assert!(g.starts_with(&owner_prefix(id)), "moves with the group");
            for u in &user {
                assert!(!g.starts_with(u) && !u.starts_with(g), "{g:?} {u:?}");
            }
        }
        assert!(tally_key(id, "m1", 1, "bob").starts_with(&tally_prefix(id, "m1", 1)));
        assert!(!tally_key(id, "m1", 2, "bob").starts_with(&tally_prefix(id, "m1", 1)));
        assert!(member_key(id, "bob").starts_with(&members_prefix(id)));
    }

    #[test]
    fn users_sharing_an_id_prefix_do_not_overlap() {
        assert!(!inbox_key("alice", 1).starts_with(&owner_prefix("al")));
        assert_eq!(inbox_seq(&owner_prefix("al"), &inbox_key("alice", 1)), None);
    }
}
