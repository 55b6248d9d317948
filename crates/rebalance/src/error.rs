use thiserror::Error;

/// Why [`plan`](crate::plan) refused its input. Each message says what was wrong and what to
/// change; the planner never returns a partial plan.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    #[error("node {node_id} is listed twice; pass each node once")]
    DuplicateNode { node_id: i32 },
    #[error("shard group {shard_index} of colocation group {colocation_id} is listed twice")]
    DuplicateGroup {
        colocation_id: i32,
        shard_index: i32,
    },
    #[error(
        "shard group {shard_index} of colocation group {colocation_id} is on node {node_id}, \
         which is not in the node list"
    )]
    UnknownNode {
        colocation_id: i32,
        shard_index: i32,
        node_id: i32,
    },
    #[error("node {node_id} has capacity {capacity}; a capacity must be a finite number above 0")]
    InvalidCapacity { node_id: i32, capacity: f64 },
    #[error(
        "shard group {shard_index} of colocation group {colocation_id} has size {size_bytes}; \
         sizes cannot be negative"
    )]
    NegativeSize {
        colocation_id: i32,
        shard_index: i32,
        size_bytes: i64,
    },
    #[error("{name} is {value}; it must be a finite number of at least 0")]
    InvalidThreshold { name: &'static str, value: f64 },
    #[error("invalid rebalance strategy {name}: {reason}")]
    InvalidStrategy { name: String, reason: String },
    #[error("the total cost of all shard groups does not fit in 64 bits")]
    CostOverflow,
    #[error(
        "shard group {shard_index} of colocation group {colocation_id} must leave node {node_id} \
         (the node is inactive, should not have shards, or the strategy disallows the group \
         there) but no active node that should have shards allows it; add or enable a node, or \
         allow the group somewhere else"
    )]
    NoAllowedNode {
        colocation_id: i32,
        shard_index: i32,
        node_id: i32,
    },
}
