//! The versioned format of values in Redis.
//!
//! JSON with a format version `v`; anything that does not decode, or carries
//! another version, is reported as [`Decoded::Bad`] and treated as a miss, so
//! a rolling upgrade that changes the format only costs store reads.

use serde::{Deserialize, Serialize};

use crate::KeyRecord;

/// Bump when the encoding changes incompatibly.
pub(crate) const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Wire<R> {
    v: u32,
    /// `f` found, `n` not found, `t` tombstone (recently invalidated).
    k: char,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    r: Option<R>,
}

fn none<R>() -> Option<R> {
    None
}

#[derive(Debug)]
pub(crate) enum Decoded {
    Found(Box<KeyRecord>),
    NotFound,
    Tombstone,
    Bad,
}

pub(crate) fn encode_found(record: &KeyRecord) -> Vec<u8> {
    encode(&Wire {
        v: FORMAT_VERSION,
        k: 'f',
        r: Some(record),
    })
}

pub(crate) fn encode_not_found() -> Vec<u8> {
    encode(&Wire::<&KeyRecord> {
        v: FORMAT_VERSION,
        k: 'n',
        r: None,
    })
}

pub(crate) fn encode_tombstone() -> Vec<u8> {
    encode(&Wire::<&KeyRecord> {
        v: FORMAT_VERSION,
        k: 't',
        r: None,
    })
}

fn encode<R: Serialize>(w: &Wire<R>) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(w).unwrap_or_default()
}

pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    match serde_json::from_slice::<Wire<KeyRecord>>(bytes) {
        Ok(Wire { v, .. }) if v != FORMAT_VERSION => Decoded::Bad,
        Ok(Wire {
            k: 'f', r: Some(r), ..
        }) => Decoded::Found(Box::new(r)),
        Ok(Wire {
            k: 'n', r: None, ..
        }) => Decoded::NotFound,
        Ok(Wire {
            k: 't', r: None, ..
        }) => Decoded::Tombstone,
        _ => Decoded::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyHasher, KeyId, RateLimit, Scopes};

    #[test]
    fn round_trips() {
        let mut r = KeyRecord::new(
            KeyId::from("k"),
            KeyHasher::new(None).hash(b"x"),
            "o",
            Scopes::new(["a:*"]),
        );
        r.rate_limit = Some(RateLimit::new(5, std::time::Duration::from_secs(60)));
        r.expires_at = Some(time::macros::datetime!(2031-02-03 04:05:06.789 UTC));
        match decode(&encode_found(&r)) {
            Decoded::Found(back) => assert_eq!(*back, r),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(&encode_not_found()), Decoded::NotFound));
        assert!(matches!(decode(&encode_tombstone()), Decoded::Tombstone));
    }

    #[test]
    fn garbage_and_other_versions_are_bad() {
        for bytes in [
            &b""[..],
            b"\xff\xfe\x00garbage",
            br#"{"v":2,"k":"n"}"#,
            br#"{"v":1,"k":"f"}"#,
            br#"{"v":1,"k":"x"}"#,
            br#"{"v":1,"k":"f","r":{"id":"k"}}"#,
        ] {
            assert!(matches!(decode(bytes), Decoded::Bad), "{bytes:?}");
        }
    }
}
