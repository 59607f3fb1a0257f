//! [`forward_to_sql_store!`]: the public SQL stores' trait impls.

/// Implements [`KeyStore`](crate::KeyStore) and
/// [`KeyAdmin`](crate::KeyAdmin) for a public store whose field `sql` is a
/// [`SqlStore`](super::SqlStore), so the public stores stay plain (non-generic) types.
macro_rules! forward_to_sql_store {
    ($store:ty) => {
        #[$crate::async_trait]
        impl $crate::KeyStore for $store {
            async fn find_by_hash(
                &self,
                hash: &$crate::KeyHash,
            ) -> Result<Option<$crate::KeyRecord>, $crate::StoreError> {
                self.sql.find_by_hash(hash).await
            }
            async fn find_by_id(
                &self,
                id: &$crate::KeyId,
            ) -> Result<Option<$crate::KeyRecord>, $crate::StoreError> {
                self.sql.find_by_id(id).await
            }
            async fn list_by_owner(
                &self,
                owner: &str,
            ) -> Result<Vec<$crate::KeyRecord>, $crate::StoreError> {
                self.sql.list_by_owner(owner).await
            }
            async fn record_usage(
                &self,
                batch: &$crate::UsageBatch,
            ) -> Result<(), $crate::StoreError> {
                self.sql.record_usage(batch).await
            }
            async fn recently_used(
                &self,
                limit: usize,
                after: Option<&$crate::store::RecentCursor>,
            ) -> Result<Vec<$crate::store::RecentKey>, $crate::StoreError> {
                self.sql.recently_used(limit, after).await
            }
        }

        #[$crate::async_trait]
        impl $crate::KeyAdmin for $store {
            async fn migrate(&self) -> Result<(), $crate::StoreError> {
                self.sql.migrate().await
            }
            async fn create_key(
                &self,
                hasher: &$crate::KeyHasher,
                new: $crate::NewKey,
            ) -> Result<$crate::CreatedKey, $crate::StoreError> {
                self.sql.create_key(hasher, new).await
            }
            async fn revoke_key(
                &self,
                id: &$crate::KeyId,
            ) -> Result<Option<$crate::KeyRecord>, $crate::StoreError> {
                self.sql.revoke_key(id).await
            }
            async fn import_key(
                &self,
                record: &$crate::KeyRecord,
            ) -> Result<$crate::KeyRecord, $crate::StoreError> {
                self.sql.import_key(record).await
            }
            async fn revoke_owner(
                &self,
                owner: &str,
            ) -> Result<Vec<$crate::KeyRecord>, $crate::StoreError> {
                self.sql.revoke_owner(owner).await
            }
            async fn set_expires_at(
                &self,
                id: &$crate::KeyId,
                at: Option<::time::OffsetDateTime>,
            ) -> Result<Option<$crate::KeyRecord>, $crate::StoreError> {
                self.sql.set_expires_at(id, at).await
            }
            async fn key_details(
                &self,
                id: &$crate::KeyId,
            ) -> Result<Option<$crate::KeyDetails>, $crate::StoreError> {
                self.sql.key_details(id).await
            }
        }
    };
}
pub(crate) use forward_to_sql_store;
