//! The demo's business data: orders, kept in memory per owner (a key sees
//! the orders of its owner, whichever of the owner's keys created them).
//!
//! ```
//! use apikey_cache_examples::demo::orders::{NewOrder, OrderBook};
//!
//! let book = OrderBook::default();
//! let order = book.create("acme", "key_1", NewOrder { item: "widget".into(), quantity: 2 });
//! assert_eq!(book.list("acme"), vec![order]);
//! assert!(book.list("globex").is_empty());
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::contract::ApiError;

/// Orders kept per owner; the oldest go first past this many, so a demo
/// left running cannot grow without bound.
pub const MAX_ORDERS_PER_OWNER: usize = 1_000;
/// Owners kept; past this many, new owners' orders are refused.
pub const MAX_OWNERS: usize = 10_000;
/// Longest accepted item name, in bytes.
pub const MAX_ITEM_LEN: usize = 200;

/// `POST /v1/orders` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// What is ordered (1 to [`MAX_ITEM_LEN`] bytes).
    pub item: String,
    /// How many (at least 1; default 1).
    #[serde(default = "one")]
    pub quantity: u32,
}

fn one() -> u32 {
    1
}

impl NewOrder {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.item.trim().is_empty() || self.item.len() > MAX_ITEM_LEN {
            return Err(ApiError::invalid(format!(
                "item must be 1 to {MAX_ITEM_LEN} bytes"
            )));
        }
        if self.quantity == 0 {
            return Err(ApiError::invalid("quantity must be at least 1"));
        }
        Ok(())
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// `ord_` + a random id.
    pub id: String,
    /// The owner of the key that created it.
    pub owner: String,
    /// What is ordered.
    pub item: String,
    /// How many.
    pub quantity: u32,
    /// The key that created it.
    pub created_by: String,
    /// When (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// In-memory orders, per owner. Cheap to clone: clones share the orders.
#[derive(Debug, Clone, Default)]
pub struct OrderBook {
    inner: Arc<Mutex<HashMap<String, VecDeque<Order>>>>,
}

impl OrderBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Order>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters for a demo: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The orders of `owner`, oldest first.
    pub fn list(&self, owner: &str) -> Vec<Order> {
        self.lock()
            .get(owner)
            .map(|orders| orders.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records an order for `owner`, created with key `key_id`. Call
    /// [`NewOrder::validate`] first; see [`try_create`](Self::try_create).
    pub fn create(&self, owner: &str, key_id: &str, new: NewOrder) -> Order {
        let order = Order {
            id: format!("ord_{}", uuid::Uuid::new_v4().simple()),
            owner: owner.to_owned(),
            item: new.item,
            quantity: new.quantity,
            created_by: key_id.to_owned(),
            created_at: OffsetDateTime::now_utc(),
        };
        let mut map = self.lock();
        let orders = map.entry(owner.to_owned()).or_default();
        if orders.len() >= MAX_ORDERS_PER_OWNER {
            orders.pop_front();
        }
        orders.push_back(order.clone());
        order
    }

    /// Validates and records an order; refuses new owners past
    /// [`MAX_OWNERS`] (503 `order_book_full`).
    pub fn try_create(&self, owner: &str, key_id: &str, new: NewOrder) -> Result<Order, ApiError> {
        new.validate()?;
        {
            let map = self.lock();
            if map.len() >= MAX_OWNERS && !map.contains_key(owner) {
                return Err(ApiError::new(
                    503,
                    "order_book_full",
                    "the demo keeps orders for a bounded number of owners",
                ));
            }
        }
        Ok(self.create(owner, key_id, new))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounded_per_owner() {
        let book = OrderBook::default();
        for i in 0..MAX_ORDERS_PER_OWNER + 5 {
            book.create(
                "acme",
                "k",
                NewOrder {
                    item: format!("i{i}"),
                    quantity: 1,
                },
            );
        }
        let orders = book.list("acme");
        assert_eq!(orders.len(), MAX_ORDERS_PER_OWNER);
        assert_eq!(orders[0].item, "i5");
    }

    #[test]
    fn validation() {
        let bad = NewOrder {
            item: " ".into(),
            quantity: 1,
        };
        assert_eq!(bad.validate().unwrap_err().status(), 400);
        let zero = NewOrder {
            item: "x".into(),
            quantity: 0,
        };
        assert!(zero.validate().is_err());
    }
}
