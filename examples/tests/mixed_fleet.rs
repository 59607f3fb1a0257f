//! A fleet of one `axum-demo` and one `actix-demo` on the same Redis and
//! database behaves as one fleet: a revocation, an owner suspension or a
//! fleet-wide mode change on either reaches the other, and so does every
//! change to an owner's key list.

mod contract;
mod support;

const AXUM: &str = env!("CARGO_BIN_EXE_axum-demo");
const ACTIX: &str = env!("CARGO_BIN_EXE_actix-demo");

#[tokio::test]
async fn axum_then_actix() {
    contract::fleet::two_instances_act_as_one_fleet(AXUM, ACTIX).await;
}

#[tokio::test]
async fn actix_then_axum() {
    contract::fleet::two_instances_act_as_one_fleet(ACTIX, AXUM).await;
}

#[tokio::test]
async fn owner_key_lists_axum_then_actix() {
    contract::owner_lists::owner_key_list_across_instances(AXUM, ACTIX).await;
}

#[tokio::test]
async fn owner_key_lists_actix_then_axum() {
    contract::owner_lists::owner_key_list_across_instances(ACTIX, AXUM).await;
}
