//! `apikey-cache-tower`: a `tower::Layer` for `apikey-cache` (axum, tonic,
//! hyper).
//!
//! Not built yet: the layer, the axum extractor and the health router land
//! with the tower issue. Until then, call
//! [`apikey_cache::ApiKeyCache::verify`] from your own middleware and render
//! rejections with [`apikey_cache::Outcome::rejection`].
#![deny(unsafe_code)]
