//! No public type's `Debug` prints a presented or issued key: what ends up
//! in logs and panic messages is a fingerprint or `<redacted>`.

#![allow(clippy::unwrap_used)]

use apikey_cache::{check_key, HeaderLookup, KeyAdmin, KeyHasher, MemoryStore, NewKey};

/// Both the one-line and the pretty form.
fn both(value: &impl std::fmt::Debug) -> [String; 2] {
    [format!("{value:?}"), format!("{value:#?}")]
}

#[tokio::test]
async fn created_key_shows_the_fingerprint_not_the_plaintext() {
    let store = MemoryStore::new();
    let created = store
        .create_key(&KeyHasher::new(None), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    let fingerprint = created.record.hash.fingerprint();
    for shown in both(&created) {
        assert!(!shown.contains(&created.plaintext), "{shown}");
        assert!(shown.contains(&fingerprint), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

#[test]
fn extracted_and_header_lookup_show_the_length_only() {
    let key = "ak_live_s3cr3t_value";
    let extracted = check_key(key.as_bytes());
    let lookup = HeaderLookup::One(key.as_bytes());
    for shown in both(&extracted).into_iter().chain(both(&lookup)) {
        assert!(!shown.contains(key), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted, 20 bytes>"), "{shown}");
    }
}
