//! `apikey-cache-actix`: an actix-web middleware for `apikey-cache`.
//!
//! Not built yet: the `Transform`, the extractor and the health service land
//! with the actix issue. Until then, call
//! [`apikey_cache::ApiKeyCache::verify`] from your own middleware and render
//! rejections with [`apikey_cache::Outcome::rejection`].
#![deny(unsafe_code)]
