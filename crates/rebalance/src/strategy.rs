//! Rebalance strategies: what a shard group costs, how much a node can carry, where a group may
//! go, and how close to even is close enough.
//!
//! A strategy is data, not code: the catalog stores custom strategies as JSON rows (like Citus's
//! `pg_dist_rebalance_strategy`), and the pure planner cannot call SQL functions, so the cost,
//! capacity and placement rules are enums and tables instead of function names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::PlanError;

/// Fixed cost added to every shard group by [`Strategy::by_disk_size`]: 100 MiB. Without it an
/// empty group would be free to pile up anywhere, yet every group costs a move, connections and
/// catalog rows; 100 MiB also matches the order of magnitude Citus uses for the same purpose.
pub const DEFAULT_DISK_BASE_COST_BYTES: i64 = 100 * 1024 * 1024;

/// by_shard_count: every group costs 1 and the default threshold is 0, so counts end within one
/// group of even.
pub const SHARD_COUNT_DEFAULT_THRESHOLD: f64 = 0.0;
/// by_shard_count never skips a move as "not worth it": all groups cost the same.
pub const SHARD_COUNT_IMPROVEMENT_THRESHOLD: f64 = 0.0;
/// by_disk_size: a node within ±10% of the average utilisation is balanced enough. Sizes drift
/// all the time; a tighter band would make the rebalancer chase noise.
pub const DISK_SIZE_DEFAULT_THRESHOLD: f64 = 0.1;
/// by_disk_size refuses thresholds below 1%, for the same reason.
pub const DISK_SIZE_MINIMUM_THRESHOLD: f64 = 0.01;
/// by_disk_size: a move that overshoots (leaves the target fuller than the source) must improve
/// the pair's balance by at least half of what it adds to the target, so a 1 TB group is not
/// moved to win 10 GB.
pub const DISK_SIZE_IMPROVEMENT_THRESHOLD: f64 = 0.5;

/// How a shard group's cost is computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CostKind {
    /// Every group costs 1.
    ShardCount,
    /// A group costs its size in bytes plus a fixed base.
    DiskSize { base_cost_bytes: i64 },
}

impl CostKind {
    /// The cost of a group of `size_bytes`, or `None` on overflow.
    pub fn cost(&self, size_bytes: i64) -> Option<i64> {
        match self {
            CostKind::ShardCount => Some(1),
            CostKind::DiskSize { base_cost_bytes } => size_bytes.checked_add(*base_cost_bytes),
        }
    }
}

/// A user-defined strategy, stored in the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomStrategy {
    pub name: String,
    pub cost: CostKind,
    /// Capacity per node id; a node that is not listed keeps [`NodeState::capacity`].
    ///
    /// [`NodeState::capacity`]: crate::NodeState::capacity
    #[serde(default, with = "pairs")]
    pub capacity_overrides: BTreeMap<i32, f64>,
    /// `(colocation_id, node_id)` pairs where the colocation group's shard groups may not be.
    /// Groups already there are moved away like those on a draining node.
    #[serde(default)]
    pub disallowed: BTreeSet<(i32, i32)>,
    /// Threshold used when the plan options give none.
    pub default_threshold: f64,
    /// Lowest threshold accepted; a lower one is raised to it.
    #[serde(default)]
    pub minimum_threshold: f64,
    /// Improvement threshold used when the plan options give none.
    #[serde(default)]
    pub improvement_threshold: f64,
}

/// A rebalance strategy.
///
/// Semantics shared by all strategies (the same as Citus's):
/// - **threshold** `t`: with `avg` the total cost divided by the total capacity of the nodes that
///   may have shards, a node is balanced when its utilisation is within `[avg·(1−t), avg·(1+t)]`.
///   The planner moves groups only while some node is outside that band, and only from a node
///   above the band's bottom to a node below its top.
/// - **improvement threshold** `θ`: a move that leaves the target fuller than the source (it
///   overshoots) is made only if the improvement of the pair's balance divided by the
///   utilisation the group adds is at least `θ`. Moves that do not overshoot are always worth it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "strategy")]
pub enum Strategy {
    /// Even out the number of shard groups per unit of capacity, and spread each colocation
    /// group over the nodes.
    ByShardCount,
    /// Even out bytes per unit of capacity; each group costs its size plus `base_cost_bytes`.
    ByDiskSize {
        base_cost_bytes: i64,
    },
    Custom(CustomStrategy),
}

impl Strategy {
    /// by_disk_size with the default base cost.
    pub fn by_disk_size() -> Self {
        Strategy::ByDiskSize {
            base_cost_bytes: DEFAULT_DISK_BASE_COST_BYTES,
        }
    }

    /// The built-in strategy of that name (`by_shard_count`, `by_disk_size`).
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "by_shard_count" => Some(Strategy::ByShardCount),
            "by_disk_size" => Some(Strategy::by_disk_size()),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Strategy::ByShardCount => "by_shard_count",
            Strategy::ByDiskSize { .. } => "by_disk_size",
            Strategy::Custom(custom) => &custom.name,
        }
    }

    pub fn cost_kind(&self) -> CostKind {
        match self {
            Strategy::ByShardCount => CostKind::ShardCount,
            Strategy::ByDiskSize { base_cost_bytes } => CostKind::DiskSize {
                base_cost_bytes: *base_cost_bytes,
            },
            Strategy::Custom(custom) => custom.cost.clone(),
        }
    }

    pub fn default_threshold(&self) -> f64 {
        match self {
            Strategy::ByShardCount => SHARD_COUNT_DEFAULT_THRESHOLD,
            Strategy::ByDiskSize { .. } => DISK_SIZE_DEFAULT_THRESHOLD,
            Strategy::Custom(custom) => custom.default_threshold,
        }
    }

    pub fn minimum_threshold(&self) -> f64 {
        match self {
            Strategy::ByShardCount => 0.0,
            Strategy::ByDiskSize { .. } => DISK_SIZE_MINIMUM_THRESHOLD,
            Strategy::Custom(custom) => custom.minimum_threshold,
        }
    }

    pub fn improvement_threshold(&self) -> f64 {
        match self {
            Strategy::ByShardCount => SHARD_COUNT_IMPROVEMENT_THRESHOLD,
            Strategy::ByDiskSize { .. } => DISK_SIZE_IMPROVEMENT_THRESHOLD,
            Strategy::Custom(custom) => custom.improvement_threshold,
        }
    }

    /// The capacity the planner uses for a node whose own capacity is `node_capacity`.
    pub fn capacity(&self, node_id: i32, node_capacity: f64) -> f64 {
        match self {
            Strategy::Custom(custom) => custom
                .capacity_overrides
                .get(&node_id)
                .copied()
                .unwrap_or(node_capacity),
            _ => node_capacity,
        }
    }

    /// Whether shard groups of `colocation_id` may be placed on `node_id` (eligibility of the
    /// node itself aside).
    pub fn allows(&self, colocation_id: i32, node_id: i32) -> bool {
        match self {
            Strategy::Custom(custom) => !custom.disallowed.contains(&(colocation_id, node_id)),
            _ => true,
        }
    }

    /// Checks the strategy's own numbers.
    pub fn validate(&self) -> Result<(), PlanError> {
        let invalid = |reason: String| PlanError::InvalidStrategy {
            name: self.name().to_string(),
            reason,
        };
        if let CostKind::DiskSize { base_cost_bytes } = self.cost_kind() {
            if base_cost_bytes < 0 {
                return Err(invalid(format!(
                    "base_cost_bytes is {base_cost_bytes}; it cannot be negative"
                )));
            }
        }
        for (what, value) in [
            ("default_threshold", self.default_threshold()),
            ("minimum_threshold", self.minimum_threshold()),
            ("improvement_threshold", self.improvement_threshold()),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(format!(
                    "{what} is {value}; it must be a finite number of at least 0"
                )));
            }
        }
        if self.minimum_threshold() > self.default_threshold() {
            return Err(invalid(format!(
                "minimum_threshold {} is above default_threshold {}",
                self.minimum_threshold(),
                self.default_threshold()
            )));
        }
        Ok(())
    }
}

/// Serialises a map as a list of `[key, value]` pairs. JSON object keys are strings, and serde
/// cannot turn them back into integers inside an internally tagged enum such as [`Strategy`].
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<i32, f64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<i32, f64>, D::Error> {
        Ok(Vec::<(i32, f64)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}
