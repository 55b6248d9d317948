//! Advisory lock keys shared by every process working on one coordinator.
//!
//! Locks are taken on coordinator sessions, so they vanish with the process that holds them:
//! a lock that can be taken means nobody alive is doing that work any more.

use tokio_postgres::GenericClient;

use crate::error::ClusterError;

const SHARD_GROUP_TAG: i64 = 0x5347; // "SG"
const COLOCATION_TAG: i64 = 0x5343; // "SC"

/// One shard group: the shards of one index in one colocation group. Held (exclusively) by the
/// transfer that moves it.
pub fn shard_group_key(colocation_id: i32, shard_index: i32) -> i64 {
    (SHARD_GROUP_TAG << 48)
        | ((i64::from(colocation_id) & 0xffff_ffff) << 16)
        | (i64::from(shard_index) & 0xffff)
}

/// A colocation group: shared by transfers in it, exclusive for changing its tables.
pub fn colocation_key(colocation_id: i32) -> i64 {
    (COLOCATION_TAG << 48) | (i64::from(colocation_id) & 0xffff_ffff)
}

/// Refuses to change the tables of a colocation group while one of its shard groups is being
/// transferred. Takes a transaction-level lock, so call it inside the changing transaction.
pub async fn refuse_during_transfer(
    client: &impl GenericClient,
    colocation_id: i32,
) -> Result<(), ClusterError> {
    let free: bool = client
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&colocation_key(colocation_id)],
        )
        .await?
        .get(0);
    if free {
        Ok(())
    } else {
        Err(ClusterError::Unsupported(format!(
            "a shard transfer is running in colocation group {colocation_id}; wait for it to \
             finish (see shoal.rebalance_progress) and try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_collide() {
        assert_ne!(shard_group_key(1, 0), shard_group_key(0, 1));
        assert_ne!(shard_group_key(1, 2), colocation_key(1));
        assert_ne!(shard_group_key(7, 4095), shard_group_key(7, 4094));
        assert_ne!(colocation_key(1), colocation_key(2));
    }
}
