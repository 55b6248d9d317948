//! The planner's inputs and outputs. Everything here is plain data so that the catalog can store
//! it as JSON and the executor can replay it.

use serde::{Deserialize, Serialize};

use crate::strategy::Strategy;

/// A worker as the planner sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: i32,
    /// An inactive node is drained like one that should not have shards: its groups cannot be
    /// served from there.
    pub is_active: bool,
    /// False while a node is being emptied (drain) or kept empty on purpose.
    pub should_have_shards: bool,
    /// Relative capacity: a node of capacity 2 is meant to carry twice the cost of a node of
    /// capacity 1. Only ratios matter.
    #[serde(default = "default_capacity")]
    pub capacity: f64,
}

fn default_capacity() -> f64 {
    1.0
}

impl NodeState {
    /// An active node that should have shards, with capacity 1.
    pub fn new(node_id: i32) -> Self {
        NodeState {
            node_id,
            is_active: true,
            should_have_shards: true,
            capacity: default_capacity(),
        }
    }

    /// Whether the planner may place shard groups here.
    pub fn is_eligible(&self) -> bool {
        self.is_active && self.should_have_shards
    }
}

/// All shards of one shard index in one colocation group: they live on one node and always move
/// together. A distributed schema is a colocation group with a single shard group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGroup {
    pub colocation_id: i32,
    pub shard_index: i32,
    /// The shard that names the group (the first table's shard), so a move can be shown and
    /// locked by one id.
    pub anchor_shard_id: i64,
    pub node_id: i32,
    /// Sum of the sizes of the group's shards, indexes included.
    pub size_bytes: i64,
}

/// What [`plan`](crate::plan) is asked to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    pub strategy: Strategy,
    /// Overrides the strategy's default threshold; values below the strategy's minimum are
    /// raised to it.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Overrides the strategy's improvement threshold.
    #[serde(default)]
    pub improvement_threshold: Option<f64>,
    /// Only empty the nodes that must be emptied; do not balance.
    #[serde(default)]
    pub drain_only: bool,
    /// Keep only the first this many moves of the full plan (drain moves come first).
    #[serde(default)]
    pub max_moves: Option<usize>,
}

impl PlanOptions {
    pub fn new(strategy: Strategy) -> Self {
        PlanOptions {
            strategy,
            threshold: None,
            improvement_threshold: None,
            drain_only: false,
            max_moves: None,
        }
    }
}

/// One planned move of one shard group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub colocation_id: i32,
    pub shard_index: i32,
    pub anchor_shard_id: i64,
    pub from: i32,
    pub to: i32,
    pub size_bytes: i64,
}

/// A node's load under the plan's strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub node_id: i32,
    /// Sum of the strategy's cost over the node's shard groups (a count for by_shard_count,
    /// bytes for by_disk_size).
    pub cost: i64,
    /// `cost / capacity`: the number the planner evens out.
    pub utilisation: f64,
    /// Number of shard groups on the node.
    pub groups: usize,
}

/// The result of [`plan`](crate::plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// At most one per shard group: first the groups that had to leave their node (drain),
    /// then the others in the order they were planned (by the planning step that last took the
    /// group), so a move into a node comes after the moves out of it that the planner counted
    /// on. [`build_task_graph`](crate::build_task_graph) turns that order into dependencies.
    pub moves: Vec<Move>,
    /// Every node's load before the moves, by node id.
    pub before: Vec<NodeLoad>,
    /// Every node's load after all the moves, by node id.
    pub after: Vec<NodeLoad>,
    /// The threshold actually used (after defaults and the strategy's minimum).
    pub threshold: f64,
    /// The improvement threshold actually used.
    pub improvement_threshold: f64,
}
