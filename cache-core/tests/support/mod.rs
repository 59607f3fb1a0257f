pub mod pg;
pub mod redis;
pub mod store;
