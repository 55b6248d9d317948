//! Where a row lives, computed without asking a server.
//!
//! A distributed table is hash-partitioned on the coordinator by its distribution column, one
//! partition per shard (`MODULUS` = shard count, `REMAINDER` = shard index). Anything that
//! routes a statement itself, without the coordinator's planner, must pick the same shard as
//! PostgreSQL would, bit for bit: this crate reproduces PostgreSQL's hash partitioning for the
//! key types it knows ([`KeyType`]), and says so when it does not know one (the caller then
//! leaves the statement to the coordinator).
//!
//! On top of it, [`statement`] decides which statements one shard group can answer (by
//! PostgreSQL's own parser) and writes them for the node that holds the group.
//!
//! Pure: no I/O. Checked against `satisfies_hash_partition` on real servers
//! (`tests/partition_hash.rs`).

pub mod coordinator;
mod hash;
mod key;
pub mod scatter;
pub mod statement;
pub mod topology;

pub use coordinator::{coordinator_differs, Difference};
pub use hash::{hash_bytes_extended, hash_combine64, hash_uint32_extended, PARTITION_SEED};
pub use key::{KeyError, KeyType, KeyValue};
pub use scatter::{plan_scatter, Scatter};
pub use statement::{plan, Guard, NotRoutable, Param, Place, Plan, Privilege, Target};
pub use topology::{Distribution, Placement, Shard, Table, Topology};

/// The shard index (the hash partition's remainder) a key belongs to among `shard_count`.
/// NULL keys go to remainder 0, as in PostgreSQL.
pub fn shard_index(key: &KeyValue, shard_count: u32) -> u32 {
    assert!(
        shard_count > 0,
        "a distributed table has at least one shard"
    );
    let row_hash = match key.partition_hash() {
        Some(hash) => hash_combine64(0, hash),
        None => 0,
    };
    (row_hash % u64::from(shard_count)) as u32
}
