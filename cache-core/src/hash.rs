//! Hashing presented keys and generating new ones.
//!
//! The cache never holds a plaintext key: every tier is keyed by [`KeyHash`], the
//! SHA-256 (or, with a pepper, HMAC-SHA-256) of the key as presented.
//!
//! ```
//! use apikey_cache::{generate_api_key, KeyHasher};
//!
//! let key = generate_api_key().expect("the OS RNG is available");
//! assert!(key.starts_with("ak_"));
//! let hasher = KeyHasher::new(None);
//! let hash = hasher.hash(key.as_bytes());
//! assert_eq!(hash, hasher.hash(key.as_bytes()));
//! assert_eq!(hash.fingerprint().len(), 8);
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The prefix of keys made by [`generate_api_key`].
pub const KEY_PREFIX: &str = "ak_";

/// Random base62 characters after [`KEY_PREFIX`]: 40 chars carry ~238 bits.
const RANDOM_CHARS: usize = 40;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 (or HMAC-SHA-256) of a presented API key: the identity of a key in
/// every cache tier and in the store.
///
/// `Debug` shows only the [fingerprint](Self::fingerprint), so a hash can be
/// logged without giving away the full digest.
///
/// ```
/// use apikey_cache::KeyHash;
///
/// let hash = KeyHash::from_bytes([0xab; 32]);
/// assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
/// assert_eq!(hash.fingerprint(), "abababab");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

/// Hash maps over `KeyHash` (L1, single flight) feed 16 of the 32 digest
/// bytes to their keyed hasher: the digest is already uniform, and hashing
/// half of it halves the hashing work on every cache read. Equal
/// digests still hash equally, so `Eq` and `Hash` agree.
impl std::hash::Hash for KeyHash {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut lo = [0u8; 16];
        lo.copy_from_slice(&self.0[..16]);
        state.write_u128(u128::from_le_bytes(lo));
    }
}

impl KeyHash {
    /// Wraps a 32-byte digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a digest from a byte slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(hex_str: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).ok()?;
        Some(Self(out))
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters: enough to correlate log lines, too short to
    /// be useful to anyone who reads the logs.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", self.fingerprint())
    }
}

/// Turns presented keys into [`KeyHash`]es: plain SHA-256, or HMAC-SHA-256
/// keyed with a server-side pepper.
///
/// With a pepper, a leaked copy of the store or of Redis cannot be checked
/// against guessed keys without also knowing the pepper. Changing the pepper
/// changes every hash, so every stored key must be re-issued.
///
/// ```
/// use apikey_cache::KeyHasher;
///
/// let plain = KeyHasher::new(None);
/// let peppered = KeyHasher::new(Some(b"server-secret"));
/// assert_ne!(plain.hash(b"ak_example"), peppered.hash(b"ak_example"));
/// ```
#[derive(Clone)]
pub struct KeyHasher {
    // The keyed state is built once; each hash clones it, which skips
    // re-deriving the HMAC inner and outer pads from the pepper.
    pepper: Option<Hmac<Sha256>>,
}

impl KeyHasher {
    /// A hasher; `pepper` switches from SHA-256 to HMAC-SHA-256.
    pub fn new(pepper: Option<&[u8]>) -> Self {
        let pepper = pepper.map(|p| {
            // HMAC accepts keys of every length, so this cannot fail.
            <Hmac<Sha256> as Mac>::new_from_slice(p).unwrap_or_else(|_| unreachable!())
        });
        Self { pepper }
    }

    /// Whether a pepper is configured.
    pub fn is_peppered(&self) -> bool {
        self.pepper.is_some()
    }

    /// Hashes a presented key.
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        match &self.pepper {
            None => KeyHash(Sha256::digest(key).into()),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key);
                KeyHash(mac.finalize().into_bytes().into())
            }
        }
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher")
            .field("peppered", &self.is_peppered())
            .finish()
    }
}

/// The operating system's random number generator could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct KeyGenError(getrandom::Error);

/// Generates a new API key: `ak_` followed by 40 base62 characters drawn from
/// the operating system's RNG (about 238 bits of entropy).
///
/// Show the result to its owner once and store only its [`KeyHash`].
///
/// ```
/// let key = apikey_cache::generate_api_key()?;
/// assert_eq!(key.len(), 43);
/// assert!(key[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
/// # Ok::<(), apikey_cache::KeyGenError>(())
/// ```
pub fn generate_api_key() -> Result<String, KeyGenError> {
    let mut key = String::with_capacity(KEY_PREFIX.len() + RANDOM_CHARS);
    key.push_str(KEY_PREFIX);
    let mut buf = [0u8; 64];
    while key.len() < KEY_PREFIX.len() + RANDOM_CHARS {
        getrandom::fill(&mut buf).map_err(KeyGenError)?;
        // Rejection sampling: 248 = 4 * 62, so bytes below it map uniformly.
        for b in buf.iter().filter(|b| **b < 248) {
            if key.len() == KEY_PREFIX.len() + RANDOM_CHARS {
                break;
            }
            key.push(char::from(BASE62[usize::from(*b % 62)]));
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        let h = KeyHasher::new(None).hash(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let h = KeyHasher::new(Some(b"Jefe")).hash(b"what do ya want for nothing?");
        assert_eq!(
            h.to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn generated_keys_are_distinct_and_well_formed() {
        let a = generate_api_key().unwrap();
        let b = generate_api_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.starts_with(KEY_PREFIX));
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn debug_shows_only_fingerprint() {
        let h = KeyHasher::new(None).hash(b"abc");
        assert_eq!(format!("{h:?}"), "KeyHash(ba7816bf…)");
    }

    #[test]
    fn from_slice_and_hex_reject_wrong_lengths() {
        assert!(KeyHash::from_slice(&[0; 31]).is_none());
        assert!(KeyHash::from_hex("abcd").is_none());
        assert!(KeyHash::from_hex(&"zz".repeat(32)).is_none());
    }
}
