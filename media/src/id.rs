//! Media ids and SHA-256 digests in the forms clients send and URLs carry.

use std::fmt;

/// A media id: `m` followed by a UUIDv7 in simple (32 lowercase hex digits) form, made by the
/// node that hands out the upload slot. Time-ordered, so a store's listing follows upload order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaId(String);

impl MediaId {
    pub fn generate() -> MediaId {
        MediaId(format!("m{}", uuid::Uuid::now_v7().simple()))
    }

    /// The id if `s` has the exact form [`MediaId::generate`] makes, else `None`: ids end up
    /// in file names and URLs, so nothing else is accepted.
    pub fn parse(s: &str) -> Option<MediaId> {
        let hex = s.strip_prefix('m')?;
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| MediaId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was made (ms since the Unix epoch): a UUIDv7's first 48 bits.
    pub fn created_ms(&self) -> u64 {
        u64::from_str_radix(&self.0[1..13], 16).expect("parsed ids are hex")
    }

    /// The UTC day (days since the Unix epoch) the id was made: blobs are kept in one folder
    /// (or key prefix) per day, so expiry removes whole days instead of scanning blobs.
    pub fn day(&self) -> u64 {
        self.created_ms() / DAY_MS
    }
}

pub const DAY_MS: u64 = 86_400_000;

impl fmt::Display for MediaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest; lowercase hex on the wire and in URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let nibble = |b: u8| (b as char).to_digit(16);
            out[i] = (nibble(pair[0])? * 16 + nibble(pair[1])?) as u8;
        }
        Some(Digest(out))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_nothing_else_does() {
        let id = MediaId::generate();
        assert_eq!(MediaId::parse(id.as_str()), Some(id.clone()));
        for bad in [
            "",
            "m",
            &id.as_str()[1..],
            &format!("{id}0"),
            &id.as_str().to_uppercase(),
            "m0000000000000000000000000000000/",
            "m../../../../../../../../etc/passwd",
        ] {
            assert_eq!(MediaId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_id_knows_its_day() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let id = MediaId::generate();
        assert!(id.created_ms() >= before && id.created_ms() < before + 60_000);
        assert_eq!(id.day(), id.created_ms() / DAY_MS);
        let fixed = MediaId::parse("m019ae1c0000070008000000000000000").unwrap();
        assert_eq!(fixed.created_ms(), 0x019a_e1c0_0000);
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert_eq!(Digest::from_hex(&d.to_hex()[1..]), None);
        assert_eq!(Digest::from_hex(&format!("{}g", &d.to_hex()[1..])), None);
    }
}
