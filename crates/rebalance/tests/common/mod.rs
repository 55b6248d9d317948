//! Helpers shared by the planner and task-graph tests: builders, and an independent model of
//! costs and moves to check plans against.

#![allow(dead_code)]

use std::collections::BTreeMap;

use shoal_rebalance::{CostKind, Move, NodeState, Plan, ShardGroup, Strategy};

pub const GIB: i64 = 1024 * 1024 * 1024;

pub fn group(colocation_id: i32, shard_index: i32, node_id: i32, size_bytes: i64) -> ShardGroup {
    ShardGroup {
        colocation_id,
        shard_index,
        anchor_shard_id: colocation_id as i64 * 10_000 + shard_index as i64,
        node_id,
        size_bytes,
    }
}

pub fn nodes(ids: impl IntoIterator<Item = i32>) -> Vec<NodeState> {
    ids.into_iter().map(NodeState::new).collect()
}

pub fn draining(node_id: i32) -> NodeState {
    NodeState {
        should_have_shards: false,
        ..NodeState::new(node_id)
    }
}

pub fn inactive(node_id: i32) -> NodeState {
    NodeState {
        is_active: false,
        ..NodeState::new(node_id)
    }
}

/// `count` groups of each colocation group, dealt round robin over `node_ids`.
pub fn round_robin(colocations: i32, count: i32, node_ids: &[i32], size: i64) -> Vec<ShardGroup> {
    let mut groups = Vec::new();
    let mut next = 0;
    for colocation in 1..=colocations {
        for index in 0..count {
            groups.push(group(
                colocation,
                index,
                node_ids[next % node_ids.len()],
                size,
            ));
            next += 1;
        }
    }
    groups
}

/// Cost of a group under a strategy, computed independently of the crate's own code.
pub fn cost(strategy: &Strategy, group: &ShardGroup) -> i64 {
    match strategy.cost_kind() {
        CostKind::ShardCount => 1,
        CostKind::DiskSize { base_cost_bytes } => group.size_bytes + base_cost_bytes,
    }
}

pub fn capacity(strategy: &Strategy, node: &NodeState) -> f64 {
    match strategy {
        Strategy::Custom(custom) => *custom
            .capacity_overrides
            .get(&node.node_id)
            .unwrap_or(&node.capacity),
        _ => node.capacity,
    }
}

/// Whether a group of the colocation group may be on the node under the strategy.
pub fn allowed(strategy: &Strategy, node: &NodeState, colocation_id: i32) -> bool {
    let disallowed = match strategy {
        Strategy::Custom(custom) => custom.disallowed.contains(&(colocation_id, node.node_id)),
        _ => false,
    };
    node.is_active && node.should_have_shards && !disallowed
}

/// Groups by (colocation id, shard index).
pub type Placement = BTreeMap<(i32, i32), ShardGroup>;
/// The nodes each group went through, by (colocation id, shard index).
pub type Paths = BTreeMap<(i32, i32), Vec<i32>>;

/// Replays the moves, checking that each starts where its group is. Returns the final
/// placement and each group's path.
pub fn replay(groups: &[ShardGroup], moves: &[Move]) -> Result<(Placement, Paths), String> {
    let mut placement: Placement = groups
        .iter()
        .map(|g| ((g.colocation_id, g.shard_index), g.clone()))
        .collect();
    let mut paths: Paths = groups
        .iter()
        .map(|g| ((g.colocation_id, g.shard_index), vec![g.node_id]))
        .collect();
    for (i, mv) in moves.iter().enumerate() {
        let key = (mv.colocation_id, mv.shard_index);
        let Some(current) = placement.get_mut(&key) else {
            return Err(format!("move {i} names an unknown group {key:?}"));
        };
        if current.node_id != mv.from {
            return Err(format!(
                "move {i} takes {key:?} from {} but it is on {}",
                mv.from, current.node_id
            ));
        }
        if mv.from == mv.to {
            return Err(format!("move {i} does not move {key:?}"));
        }
        if current.anchor_shard_id != mv.anchor_shard_id || current.size_bytes != mv.size_bytes {
            return Err(format!("move {i} misreports {key:?}"));
        }
        current.node_id = mv.to;
        paths.get_mut(&key).expect("same keys").push(mv.to);
    }
    Ok((placement, paths))
}

/// (cost, groups) per node id.
pub fn loads(
    nodes: &[NodeState],
    groups: impl IntoIterator<Item = ShardGroup>,
    strategy: &Strategy,
) -> BTreeMap<i32, (i64, usize)> {
    let mut loads: BTreeMap<i32, (i64, usize)> =
        nodes.iter().map(|n| (n.node_id, (0, 0))).collect();
    for group in groups {
        let entry = loads.get_mut(&group.node_id).expect("known node");
        entry.0 += cost(strategy, &group);
        entry.1 += 1;
    }
    loads
}

pub fn plan_loads(loads: &[shoal_rebalance::NodeLoad]) -> BTreeMap<i32, (i64, usize)> {
    loads
        .iter()
        .map(|load| (load.node_id, (load.cost, load.groups)))
        .collect()
}

/// Number of groups per node id after the plan.
pub fn groups_per_node(plan: &Plan) -> BTreeMap<i32, usize> {
    plan.after
        .iter()
        .map(|load| (load.node_id, load.groups))
        .collect()
}

/// Count of each colocation group's shard groups per node id, for the given nodes.
pub fn colocation_counts(
    placement: &Placement,
    node_ids: &[i32],
) -> BTreeMap<i32, BTreeMap<i32, usize>> {
    let mut counts: BTreeMap<i32, BTreeMap<i32, usize>> = BTreeMap::new();
    for group in placement.values() {
        counts
            .entry(group.colocation_id)
            .or_insert_with(|| node_ids.iter().map(|&n| (n, 0)).collect());
    }
    for group in placement.values() {
        if let Some(count) = counts
            .get_mut(&group.colocation_id)
            .and_then(|per_node| per_node.get_mut(&group.node_id))
        {
            *count += 1;
        }
    }
    counts
}

pub fn spread(values: impl IntoIterator<Item = usize>) -> usize {
    let values: Vec<usize> = values.into_iter().collect();
    values.iter().max().copied().unwrap_or(0) - values.iter().min().copied().unwrap_or(0)
}
