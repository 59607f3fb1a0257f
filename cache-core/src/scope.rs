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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Up to this many exact scopes are compared one by one; a scan of a few
/// short strings beats hashing the required scope.
const SCAN_LIMIT: usize = 8;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scopes a key grants, with a lookup index.
///
/// Cheap to clone: clones share one immutable set. The cache also shares
/// one set between the cached records that grant the same scopes (see
/// [`ScopeSets`]), so a million keys with a handful of distinct scope
/// lists hold a handful of sets, not a million.
#[derive(Clone, Default)]
pub struct Scopes(Arc<ScopeSet>);

#[derive(Default)]
struct ScopeSet {
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
        let mut out = ScopeSet::default();
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
        Self(Arc::new(out))
    }

    /// The scopes as given, in order.
    pub fn as_slice(&self) -> &[String] {
        &self.0.list
    }

    /// Whether `scope` is granted, directly or by a wildcard.
    pub fn grants(&self, scope: &str) -> bool {
        let set = &*self.0;
        let exact = match &set.exact_set {
            Some(exact) => exact.contains(scope),
            None => set.exact.iter().any(|s| **s == *scope),
        };
        set.all || exact || set.prefixes.iter().any(|p| scope.starts_with(&**p))
    }

    /// Whether every required scope is granted. Allocates nothing.
    pub fn grants_all(&self, required: &RequiredScopes) -> bool {
        self.0.all || required.iter().all(|s| self.grants(s))
    }

    /// The required scopes that are not granted, in the order required.
    pub fn missing(&self, required: &RequiredScopes) -> Vec<String> {
        required
            .iter()
            .filter(|s| !self.grants(s))
            .map(|s| s.to_string())
            .collect()
    }

    /// Whether both share one set (not just equal lists).
    #[cfg(test)]
    pub(crate) fn shares(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The scope sets of the cached records, one per distinct list: a record
/// loaded into the cache takes the set an earlier record with the same list
/// already holds ([`ScopeSets::share`]), on the load path, never on a hit.
///
/// Bounded: past [`ScopeSets::MAX`] distinct lists the table starts over
/// (records keep the sets they hold; only later loads share less), so keys
/// that each grant a list of their own cost what they did without it.
#[derive(Default)]
pub(crate) struct ScopeSets(Mutex<HashMap<Vec<String>, Scopes>>);

impl ScopeSets {
    const MAX: usize = 4096;

    /// `scopes`, or an equal set already shared.
    pub(crate) fn share(&self, scopes: Scopes) -> Scopes {
        let mut sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = sets.get(scopes.as_slice()) {
            return shared.clone();
        }
        if sets.len() >= Self::MAX {
            sets.clear();
        }
        sets.insert(scopes.as_slice().to_vec(), scopes.clone());
        scopes
    }
}

impl std::fmt::Debug for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.0.list).finish()
    }
}

impl PartialEq for Scopes {
    fn eq(&self, other: &Self) -> bool {
        self.0.list == other.0.list
    }
}

impl Eq for Scopes {}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.list.serialize(s)
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
    fn equal_lists_share_one_set_and_the_table_is_bounded() {
        let sets = ScopeSets::default();
        let a = sets.share(Scopes::new(["orders:*", "whoami"]));
        let b = sets.share(Scopes::new(["orders:*", "whoami"]));
        let c = sets.share(Scopes::new(["whoami", "orders:*"]));
        assert!(a.shares(&b), "same list, one set");
        assert!(!a.shares(&c), "another order is another list");
        assert!(b.grants("orders:read") && !b.grants("billing"));
        for i in 0..ScopeSets::MAX + 10 {
            sets.share(Scopes::new([format!("s{i}")]));
        }
        let len = sets.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(len <= ScopeSets::MAX, "{len}");
        assert!(a.grants("orders:x"), "a set outlives the table's reset");
    }

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
