//! Finding the API key in a request's headers, with the early rejections that
//! happen before any hashing.
//!
//! Sources are tried in order; the first one present decides. The default is
//! `Authorization: Bearer <key>`, then `X-API-Key`. A query parameter can be
//! added but is off by default: URLs end up in access logs.
//!
//! ```
//! use apikey_cache::{Extracted, KeyExtractor};
//! use http::HeaderMap;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("authorization", "Bearer ak_live123".parse().unwrap());
//! let extractor = KeyExtractor::default();
//! assert_eq!(extractor.extract(&headers), Extracted::Key("ak_live123"));
//! assert_eq!(extractor.extract(&HeaderMap::new()), Extracted::Missing);
//! ```

use std::fmt;

/// Presented keys longer than this are rejected before hashing.
pub const MAX_KEY_LEN: usize = 256;

/// Where a key may be found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// `Authorization: Bearer <key>` (scheme matched case-insensitively).
    AuthorizationBearer,
    /// The whole value of a header, e.g. `X-API-Key` (name matched
    /// case-insensitively).
    Header(String),
    /// A query-string parameter, taken verbatim (no percent-decoding).
    Query(String),
}

/// Read access to a request's headers and query, implemented by each web
/// framework adapter (and for [`http::HeaderMap`] with the `http` feature).
///
/// ```
/// use apikey_cache::{Extracted, HeaderLookup, HeaderSource, KeyExtractor};
///
/// struct OneHeader(&'static str, &'static [u8]);
/// impl HeaderSource for OneHeader {
///     fn header(&self, name: &str) -> HeaderLookup<'_> {
///         if self.0.eq_ignore_ascii_case(name) {
///             HeaderLookup::One(self.1)
///         } else {
///             HeaderLookup::Absent
///         }
///     }
/// }
///
/// let req = OneHeader("x-api-key", b"ak_abc");
/// assert_eq!(KeyExtractor::default().extract(&req), Extracted::Key("ak_abc"));
/// ```
pub trait HeaderSource {
    /// The value of header `name` (given in lowercase), or whether it is
    /// absent or repeated.
    fn header(&self, name: &str) -> HeaderLookup<'_>;

    /// The raw query string (after `?`), if the adapter exposes it.
    fn query(&self) -> Option<&str> {
        None
    }
}

/// One header as seen by the extractor.
///
/// Its `Debug` never prints the value (it may be a presented key), only
/// its length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HeaderLookup<'a> {
    /// Not in the request.
    Absent,
    /// Exactly one value.
    One(&'a [u8]),
    /// More than one value: ambiguous, so refused.
    Many,
}

impl<'a> HeaderLookup<'a> {
    /// Classifies an iterator of values.
    pub fn from_values(mut values: impl Iterator<Item = &'a [u8]>) -> Self {
        match (values.next(), values.next()) {
            (None, _) => Self::Absent,
            (Some(v), None) => Self::One(v),
            (Some(_), Some(_)) => Self::Many,
        }
    }
}

impl fmt::Debug for HeaderLookup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("Absent"),
            Self::One(v) => f.debug_tuple("One").field(&Redacted(v.len())).finish(),
            Self::Many => f.write_str("Many"),
        }
    }
}

/// Stands in for a presented key in `Debug` output: logs and panic
/// messages get its length, never the key.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

#[cfg(feature = "http")]
impl HeaderSource for http::HeaderMap {
    #[inline]
    fn header(&self, name: &str) -> HeaderLookup<'_> {
        use http::header::{HeaderName, AUTHORIZATION};
        // Looking up by `&str` parses the name on every request; the
        // default sources get prebuilt names.
        static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
        let values = match name {
            "authorization" => self.get_all(AUTHORIZATION),
            "x-api-key" => self.get_all(&X_API_KEY),
            other => self.get_all(other),
        };
        HeaderLookup::from_values(values.into_iter().map(|v| v.as_bytes()))
    }
}

/// Why a presented value was refused before hashing. All of them answer
/// `invalid_api_key` to the client; the reason is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// The key was empty.
    Empty,
    /// Longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// A byte outside visible ASCII (`0x21..=0x7E`).
    InvalidByte,
    /// The same source header appeared more than once.
    Duplicated,
    /// An `Authorization` header with a scheme other than `Bearer`, and no
    /// other source held a key.
    UnsupportedScheme,
}

impl Malformed {
    /// A short stable name, for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::InvalidByte => "invalid_byte",
            Self::Duplicated => "duplicated",
            Self::UnsupportedScheme => "unsupported_scheme",
        }
    }
}

/// What [`KeyExtractor::extract`] found.
///
/// Its `Debug` never prints the key (no hasher is at hand for a
/// fingerprint), only its length:
///
/// ```
/// use apikey_cache::Extracted;
///
/// assert_eq!(format!("{:?}", Extracted::Key("ak_secret")), "Key(<redacted, 9 bytes>)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// A syntactically acceptable key.
    Key(&'a str),
    /// No source held a key.
    Missing,
    /// A source held something that cannot be a key.
    Malformed(Malformed),
}

impl fmt::Debug for Extracted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => f.debug_tuple("Key").field(&Redacted(k.len())).finish(),
            Self::Missing => f.write_str("Missing"),
            Self::Malformed(m) => f.debug_tuple("Malformed").field(m).finish(),
        }
    }
}

/// The ordered list of places to look for a key.
///
/// ```
/// use apikey_cache::{KeyExtractor, KeySource};
///
/// let only_custom = KeyExtractor::new(vec![KeySource::Header("x-service-token".into())]);
/// assert_eq!(only_custom.sources().len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExtractor {
    sources: Vec<KeySource>,
}

impl Default for KeyExtractor {
    fn default() -> Self {
        Self::new(vec![
            KeySource::AuthorizationBearer,
            KeySource::Header("x-api-key".into()),
        ])
    }
}

impl KeyExtractor {
    /// Looks in `sources`, in order. Header names are lowercased here once.
    pub fn new(sources: Vec<KeySource>) -> Self {
        let sources = sources
            .into_iter()
            .map(|s| match s {
                KeySource::Header(h) => KeySource::Header(h.to_ascii_lowercase()),
                other => other,
            })
            .collect();
        Self { sources }
    }

    /// The configured sources.
    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }

    /// Finds the key in a request.
    pub fn extract<'a, R: HeaderSource + ?Sized>(&self, req: &'a R) -> Extracted<'a> {
        match self.find(req) {
            Ok(Some(key)) => match std::str::from_utf8(key) {
                Ok(key) => Extracted::Key(key),
                Err(_) => Extracted::Malformed(Malformed::InvalidByte),
            },
            Ok(None) => Extracted::Missing,
            Err(m) => Extracted::Malformed(m),
        }
    }

    /// [`extract`](Self::extract) for the request path: the key's bytes,
    /// checked ([`validate_key`]: visible ASCII, so also UTF-8, which is
    /// not checked again); `Ok(None)` when there is no key.
    #[inline]
    pub(crate) fn find<'a, R: HeaderSource + ?Sized>(
        &self,
        req: &'a R,
    ) -> Result<Option<&'a [u8]>, Malformed> {
        let checked = |v: &'a [u8]| validate_key(v).map(|()| Some(v));
        let mut other_scheme = false;
        for source in &self.sources {
            match source {
                KeySource::AuthorizationBearer => match req.header("authorization") {
                    HeaderLookup::Absent => {}
                    HeaderLookup::Many => return Err(Malformed::Duplicated),
                    HeaderLookup::One(v) => match strip_bearer(v) {
                        Some(token) => return checked(token),
                        None => other_scheme = true,
                    },
                },
                KeySource::Header(name) => match req.header(name) {
                    HeaderLookup::Absent => {}
                    HeaderLookup::Many => return Err(Malformed::Duplicated),
                    HeaderLookup::One(v) => return checked(v),
                },
                KeySource::Query(param) => {
                    let Some(query) = req.query() else { continue };
                    let values = query.split('&').filter_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == param).then_some(v.as_bytes())
                    });
                    match HeaderLookup::from_values(values) {
                        HeaderLookup::Absent => {}
                        HeaderLookup::Many => return Err(Malformed::Duplicated),
                        HeaderLookup::One(v) => return checked(v),
                    }
                }
            }
        }
        if other_scheme {
            Err(Malformed::UnsupportedScheme)
        } else {
            Ok(None)
        }
    }
}

/// Checks a bare key value: length and visible-ASCII bytes.
///
/// ```
/// use apikey_cache::{check_key, Extracted, Malformed};
///
/// assert_eq!(check_key(b"ak_x"), Extracted::Key("ak_x"));
/// assert_eq!(check_key(b"ak x"), Extracted::Malformed(Malformed::InvalidByte));
/// ```
pub fn check_key(value: &[u8]) -> Extracted<'_> {
    if let Err(m) = validate_key(value) {
        return Extracted::Malformed(m);
    }
    match std::str::from_utf8(value) {
        Ok(s) => Extracted::Key(s),
        Err(_) => Extracted::Malformed(Malformed::InvalidByte),
    }
}

/// The checks of [`check_key`] without the conversion to `&str`.
#[inline]
pub(crate) fn validate_key(value: &[u8]) -> Result<(), Malformed> {
    if value.is_empty() {
        return Err(Malformed::Empty);
    }
    if value.len() > MAX_KEY_LEN {
        return Err(Malformed::TooLong);
    }
    // Visible ASCII is 0x21..=0x7e. No early exit: the fold over the whole
    // (short) value vectorizes, which a short-circuiting `any` does not.
    if value
        .iter()
        .fold(false, |bad, b| bad | (b.wrapping_sub(0x21) > 0x7e - 0x21))
    {
        return Err(Malformed::InvalidByte);
    }
    Ok(())
}

/// `Bearer <token>` -> `<token>` (surrounding spaces trimmed); `None` for
/// other schemes.
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let value = value.trim_ascii();
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    match rest.first() {
        // `Bearer` alone: the scheme is right and the token is empty.
        None => Some(rest),
        Some(b' ') | Some(b'\t') => Some(rest.trim_ascii_start()),
        // `Bearerx...` is some other scheme.
        Some(_) => None,
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn extract(pairs: &[(&'static str, &[u8])]) -> Extracted<'static> {
        let h = Box::leak(Box::new(headers(pairs)));
        KeyExtractor::default().extract(h)
    }

    #[test]
    fn bearer_then_x_api_key() {
        assert_eq!(
            extract(&[("authorization", b"Bearer abc")]),
            Extracted::Key("abc")
        );
        assert_eq!(
            extract(&[("authorization", b"bEaReR   abc ")]),
            Extracted::Key("abc")
        );
        assert_eq!(extract(&[("x-api-key", b"xyz")]), Extracted::Key("xyz"));
        assert_eq!(
            extract(&[("authorization", b"Bearer abc"), ("x-api-key", b"xyz")]),
            Extracted::Key("abc")
        );
    }

    #[test]
    fn other_schemes_fall_through_or_are_malformed() {
        assert_eq!(
            extract(&[("authorization", b"Basic dXNlcjpwYXNz")]),
            Extracted::Malformed(Malformed::UnsupportedScheme)
        );
        assert_eq!(
            extract(&[("authorization", b"Bearerabc")]),
            Extracted::Malformed(Malformed::UnsupportedScheme)
        );
        assert_eq!(
            extract(&[
                ("authorization", b"Basic dXNlcjpwYXNz"),
                ("x-api-key", b"k")
            ]),
            Extracted::Key("k")
        );
    }

    #[test]
    fn early_rejections() {
        assert_eq!(extract(&[]), Extracted::Missing);
        assert_eq!(
            extract(&[("authorization", b"Bearer")]),
            Extracted::Malformed(Malformed::Empty)
        );
        assert_eq!(
            extract(&[("x-api-key", b"")]),
            Extracted::Malformed(Malformed::Empty)
        );
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        assert_eq!(
            extract(&[("x-api-key", &long)]),
            Extracted::Malformed(Malformed::TooLong)
        );
        let max = vec![b'a'; MAX_KEY_LEN];
        assert!(matches!(extract(&[("x-api-key", &max)]), Extracted::Key(_)));
        assert_eq!(
            extract(&[("x-api-key", b"caf\xc3\xa9")]),
            Extracted::Malformed(Malformed::InvalidByte)
        );
        assert_eq!(
            extract(&[("x-api-key", b"a\tb")]),
            Extracted::Malformed(Malformed::InvalidByte)
        );
        assert_eq!(
            extract(&[("x-api-key", b"a"), ("x-api-key", b"b")]),
            Extracted::Malformed(Malformed::Duplicated)
        );
        assert_eq!(
            extract(&[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b")
            ]),
            Extracted::Malformed(Malformed::Duplicated)
        );
    }

    struct WithQuery(HeaderMap, &'static str);
    impl HeaderSource for WithQuery {
        fn header(&self, name: &str) -> HeaderLookup<'_> {
            self.0.header(name)
        }
        fn query(&self) -> Option<&str> {
            Some(self.1)
        }
    }

    #[test]
    fn query_only_when_configured() {
        let req = WithQuery(HeaderMap::new(), "a=1&api_key=k1");
        assert_eq!(KeyExtractor::default().extract(&req), Extracted::Missing);
        let ex = KeyExtractor::new(vec![KeySource::Query("api_key".into())]);
        assert_eq!(ex.extract(&req), Extracted::Key("k1"));
        let dup = WithQuery(HeaderMap::new(), "api_key=a&api_key=b");
        assert_eq!(
            ex.extract(&dup),
            Extracted::Malformed(Malformed::Duplicated)
        );
    }

    #[test]
    fn debug_never_prints_the_key() {
        const KEY: &str = "ak_live_s3cr3t_value";
        let h = headers(&[("x-api-key", KEY.as_bytes())]);
        let extracted = KeyExtractor::default().extract(&h);
        let lookup = h.header("x-api-key");
        for shown in [
            format!("{extracted:?}"),
            format!("{extracted:#?}"),
            format!("{lookup:?}"),
            format!("{lookup:#?}"),
        ] {
            assert!(!shown.contains(KEY), "{shown}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("<redacted, 20 bytes>"), "{shown}");
        }
        assert_eq!(format!("{extracted:?}"), "Key(<redacted, 20 bytes>)");
        assert_eq!(format!("{lookup:?}"), "One(<redacted, 20 bytes>)");
        assert_eq!(
            format!("{:?}", Extracted::Malformed(Malformed::TooLong)),
            "Malformed(TooLong)"
        );
        assert_eq!(format!("{:?}", HeaderLookup::Many), "Many");
    }

    #[test]
    fn custom_header_names_are_case_insensitive() {
        let ex = KeyExtractor::new(vec![KeySource::Header("X-Service-Token".into())]);
        let h = headers(&[("x-service-token", b"t")]);
        assert_eq!(ex.extract(&h), Extracted::Key("t"));
    }
}
