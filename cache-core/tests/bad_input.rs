//! Hostile input never panics and always gets a typed outcome.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use apikey_cache::{
    ApiKeyCache, CacheConfig, HeaderLookup, HeaderSource, Malformed, MemoryStore, Outcome,
    RequiredScopes,
};
use proptest::prelude::*;

struct Raw(Vec<(String, Vec<u8>)>);

impl HeaderSource for Raw {
    fn header(&self, name: &str) -> HeaderLookup<'_> {
        HeaderLookup::from_values(
            self.0
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice()),
        )
    }
}

fn cache() -> ApiKeyCache {
    ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn verify(cache: &ApiKeyCache, headers: &[(&str, &[u8])]) -> Outcome {
    let raw = Raw(headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect());
    rt().block_on(cache.verify(&raw, &RequiredScopes::none()))
}

#[test]
fn named_bad_inputs() {
    let c = cache();
    let ten_kb = vec![b'a'; 10 * 1024];
    type Headers<'a> = Vec<(&'a str, &'a [u8])>;
    let cases: Vec<(Headers, Outcome)> = vec![
        (vec![], Outcome::Missing),
        (
            vec![("authorization", b"")],
            Outcome::Malformed(Malformed::UnsupportedScheme),
        ),
        (
            vec![("x-api-key", b"")],
            Outcome::Malformed(Malformed::Empty),
        ),
        (
            vec![("x-api-key", &ten_kb)],
            Outcome::Malformed(Malformed::TooLong),
        ),
        (
            vec![("authorization", b"Bearer \xe2\x82\xac\xe2\x82\xac")],
            Outcome::Malformed(Malformed::InvalidByte),
        ),
        (
            vec![("x-api-key", b"ak_\x00\x01\x1b[31m")],
            Outcome::Malformed(Malformed::InvalidByte),
        ),
        (
            vec![("x-api-key", b"ak_\r\nX-Injected: 1")],
            Outcome::Malformed(Malformed::InvalidByte),
        ),
        (
            vec![("authorization", b"Basic dXNlcjpwYXNz")],
            Outcome::Malformed(Malformed::UnsupportedScheme),
        ),
        (
            vec![
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ],
            Outcome::Malformed(Malformed::Duplicated),
        ),
        (
            vec![("x-api-key", b"ak_valid_looking_but_unknown")],
            Outcome::Unknown,
        ),
    ];
    for (headers, expected) in cases {
        assert_eq!(verify(&c, &headers), expected, "{headers:?}");
    }
    // Every one of them is a 4xx for the client.
    assert_eq!(
        Outcome::Malformed(Malformed::TooLong)
            .rejection()
            .unwrap()
            .status,
        401
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_header_bytes_get_a_typed_rejection(
        auth in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..400)),
        xkey in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..400)),
    ) {
        let c = cache();
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(a) = &auth { headers.push(("authorization", a)); }
        if let Some(x) = &xkey { headers.push(("x-api-key", x)); }
        let outcome = verify(&c, &headers);
        // The store is empty: nothing may ever be valid, and no store
        // failure may appear.
        prop_assert!(matches!(
            outcome,
            Outcome::Missing | Outcome::Malformed(_) | Outcome::Unknown
        ), "{outcome:?}");
        let rejection = outcome.rejection().unwrap();
        prop_assert!((400..500).contains(&rejection.status));
    }

    #[test]
    fn arbitrary_bare_keys(key in ".{0,300}") {
        let c = cache();
        let outcome = rt().block_on(c.verify_key(&key, &RequiredScopes::none()));
        prop_assert!(matches!(outcome, Outcome::Missing | Outcome::Malformed(_) | Outcome::Unknown));
    }
}
