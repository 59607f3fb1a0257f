//! Scopes a key grants and scopes a route requires.
//!
//! A granted scope is matched exactly, except two wildcard forms: `*` grants
//! everything, and `orders:*` grants every scope that starts with `orders:`
//! (but not `orders` itself). The index is built once when a record is
//! loaded, so checking on the request path compares no more strings than it
//! must.
//!
//! ```
//! use apikey_cache::{RequiredScopes, Scopes};
//!
//! let granted = Scopes::new(["orders:*", "whoami"]);
//! assert!(granted.grants("orders:read"));
//! assert!(!granted.grants("orders"));
//! let needed = RequiredScopes::new(["orders:write", "billing:read"]);
//! assert_eq!(granted.missing(&needed), vec!["billing:read".to_string()]);
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Up to this many exact scopes are compared one by one; a scan of a few
/// short strings beats hashing the required scope.
const SCAN_LIMIT: usize = 8;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scopes a key grants, with a lookup index.
#[derive(Clone, Default)]
pub struct Scopes {
    list: Vec<String>,
    all: bool,
    /// Exact scopes, scanned when few.
    exact: Vec<Box<str>>,
    /// The same, indexed, when there are more than [`SCAN_LIMIT`].
    exact_set: Option<HashSet<Box<str>>>,
    /// `orders:*` is stored as `orders:`.
    prefixes: Vec<Box<str>>,
}

impl Scopes {
    /// Builds the scope set and its index.
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = scopes.into_iter().map(Into::into).collect();
        let mut out = Self {
            all: false,
            exact: Vec::new(),
            exact_set: None,
            prefixes: Vec::new(),
            list: Vec::new(),
        };
        for s in &list {
            if s == "*" {
                out.all = true;
            } else if let Some(prefix) = s.strip_suffix('*').filter(|p| p.ends_with(':')) {
                out.prefixes.push(prefix.into());
            } else {
                out.exact.push(s.as_str().into());
            }
        }
        if out.exact.len() > SCAN_LIMIT {
            out.exact_set = Some(out.exact.iter().cloned().collect());
        }
        out.list = list;
        out
    }

    /// The scopes as given, in order.
    pub fn as_slice(&self) -> &[String] {
        &self.list
    }

    /// Whether `scope` is granted, directly or by a wildcard.
    pub fn grants(&self, scope: &str) -> bool {
        let exact = match &self.exact_set {
            Some(set) => set.contains(scope),
            None => self.exact.iter().any(|s| **s == *scope),
        };
        self.all || exact || self.prefixes.iter().any(|p| scope.starts_with(&**p))
    }

    /// Whether every required scope is granted. Allocates nothing.
    pub fn grants_all(&self, required: &RequiredScopes) -> bool {
        self.all || required.iter().all(|s| self.grants(s))
    }

    /// The required scopes that are not granted, in the order required.
    pub fn missing(&self, required: &RequiredScopes) -> Vec<String> {
        required
            .iter()
            .filter(|s| !self.grants(s))
            .map(|s| s.to_string())
            .collect()
    }
}

impl std::fmt::Debug for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.list).finish()
    }
}

impl PartialEq for Scopes {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Scopes {}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.list.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(Self::new)
    }
}

/// The scopes a route demands; cheap to clone (shared).
///
/// ```
/// use apikey_cache::RequiredScopes;
///
/// let none = RequiredScopes::none();
/// assert!(none.is_empty());
/// let write = RequiredScopes::new(["orders:write"]);
/// assert_eq!(write.iter().collect::<Vec<_>>(), ["orders:write"]);
/// ```
#[derive(Clone, Default)]
pub struct RequiredScopes {
    /// Unique per `new` (shared by clones), 0 for none: lets a cached record
    /// remember that it satisfies this set without comparing strings again.
    id: u64,
    scopes: Arc<[Box<str>]>,
}

impl RequiredScopes {
    /// Requires every scope in `scopes`.
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let scopes: Arc<[Box<str>]> = scopes.into_iter().map(|s| s.as_ref().into()).collect();
        if scopes.is_empty() {
            return Self::none();
        }
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            scopes,
        }
    }

    /// The identity of this set (shared by its clones), 0 when empty.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Requires nothing beyond a valid key.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The required scopes.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }
}

impl PartialEq for RequiredScopes {
    fn eq(&self, other: &Self) -> bool {
        self.scopes == other.scopes
    }
}

impl Eq for RequiredScopes {}

impl std::fmt::Debug for RequiredScopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequiredScopes").field(&self.scopes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let all = Scopes::new(["*"]);
        assert!(all.grants("anything:at:all"));
        let orders = Scopes::new(["orders:*"]);
        assert!(orders.grants("orders:read"));
        assert!(orders.grants("orders:items:write"));
        assert!(!orders.grants("orders"));
        assert!(!orders.grants("ordersx:read"));
        // A star elsewhere is literal.
        let odd = Scopes::new(["ord*"]);
        assert!(odd.grants("ord*"));
        assert!(!odd.grants("orders"));
    }

    #[test]
    fn many_exact_scopes_use_the_index() {
        let many: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        let s = Scopes::new(many.iter().map(String::as_str));
        assert!(s.grants("s0") && s.grants("s19"));
        assert!(!s.grants("s20"));
    }

    #[test]
    fn missing_lists_in_order() {
        let s = Scopes::new(["a", "c:*"]);
        let req = RequiredScopes::new(["b", "a", "c:x", "d"]);
        assert!(!s.grants_all(&req));
        assert_eq!(s.missing(&req), vec!["b", "d"]);
        assert!(s.grants_all(&RequiredScopes::none()));
    }

    #[test]
    fn scopes_compare_and_print_as_their_list() {
        let s = Scopes::new(["a", "b:*"]);
        assert_eq!(s, Scopes::new(["a", "b:*"]));
        assert_ne!(s, Scopes::new(["b:*", "a"]), "order is kept");
        assert_ne!(s, Scopes::new(["a"]));
        assert_eq!(s.as_slice(), ["a", "b:*"]);
        assert_eq!(format!("{s:?}"), r#"["a", "b:*"]"#);
    }

    #[test]
    fn required_scopes_identity_equality_and_debug() {
        let a = RequiredScopes::new(["a"]);
        let again = RequiredScopes::new(["a"]);
        let b = RequiredScopes::new(["b"]);
        assert_eq!(RequiredScopes::none().id(), 0);
        assert_eq!(RequiredScopes::new(Vec::<String>::new()).id(), 0);
        assert_ne!(a.id(), 0);
        assert_ne!(a.id(), b.id(), "each set is its own");
        assert_eq!(a.clone().id(), a.id(), "clones share it");
        assert_eq!(a, again, "equal by content, whatever the identity");
        assert_ne!(a, b);
        assert!(RequiredScopes::none().is_empty());
        assert!(!a.is_empty());
        assert_eq!(a.iter().collect::<Vec<_>>(), ["a"]);
        assert_eq!(format!("{a:?}"), r#"RequiredScopes(["a"])"#);
    }

    #[test]
    fn serde_round_trip_rebuilds_index() {
        let s = Scopes::new(["a", "b:*"]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["a","b:*"]"#);
        let back: Scopes = serde_json::from_str(&json).unwrap();
        assert!(back.grants("b:c"));
        assert_eq!(back, s);
    }
}
