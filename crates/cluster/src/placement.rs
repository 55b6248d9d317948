//! Where new shards go. Pure functions: the callers read the catalog and write the result.

use std::collections::BTreeMap;

/// Places the `shard_count` shards of a new colocation group round robin over `nodes`, starting
/// at the node that holds the fewest shards now (ties: lowest node id), so successive groups
/// spread over the cluster instead of all starting on the first node.
///
/// Returns the node of each shard index. `nodes` must not be empty.
pub fn place_new_group(shard_count: usize, nodes: &[i32], load: &BTreeMap<i32, i64>) -> Vec<i32> {
    assert!(!nodes.is_empty(), "place_new_group needs at least one node");
    let mut ordered: Vec<i32> = nodes.to_vec();
    ordered.sort_unstable();
    ordered.dedup();
    let start = ordered
        .iter()
        .enumerate()
        .min_by_key(|(_, node)| (load.get(node).copied().unwrap_or(0), **node))
        .map(|(i, _)| i)
        .unwrap_or(0);
    (0..shard_count)
        .map(|i| ordered[(start + i) % ordered.len()])
        .collect()
}

/// The node that holds the fewest shards (ties: lowest node id): where a distributed schema goes.
pub fn least_loaded(nodes: &[i32], load: &BTreeMap<i32, i64>) -> Option<i32> {
    nodes
        .iter()
        .copied()
        .min_by_key(|node| (load.get(node).copied().unwrap_or(0), *node))
}

/// A new table joining an existing colocation group takes, for each shard index, the node of
/// that index in the group: that is what colocation means. Returns `None` if the group's
/// placements do not cover every index exactly once.
pub fn place_in_group(shard_count: usize, group: &[(i32, i32)]) -> Option<Vec<i32>> {
    let mut by_index: Vec<Option<i32>> = vec![None; shard_count];
    for &(index, node) in group {
        let slot = by_index.get_mut(usize::try_from(index).ok()?)?;
        match slot {
            Some(existing) if *existing != node => return None,
            _ => *slot = Some(node),
        }
    }
    by_index.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn round_robin_over_nodes() {
        let placed = place_new_group(5, &[1, 2], &load(&[]));
        assert_eq!(placed, vec![1, 2, 1, 2, 1]);
    }

    #[test]
    fn starts_at_the_least_loaded_node() {
        let placed = place_new_group(4, &[1, 2, 3], &load(&[(1, 10), (2, 3), (3, 5)]));
        assert_eq!(placed, vec![2, 3, 1, 2]);
    }

    #[test]
    fn every_node_gets_a_fair_share() {
        let nodes = [4, 7, 9];
        let placed = place_new_group(32, &nodes, &load(&[]));
        for node in nodes {
            let count = placed.iter().filter(|n| **n == node).count();
            assert!((10..=11).contains(&count), "node {node} got {count}");
        }
    }

    #[test]
    fn least_loaded_breaks_ties_by_id() {
        assert_eq!(
            least_loaded(&[3, 2, 5], &load(&[(3, 1), (2, 1), (5, 4)])),
            Some(2)
        );
        assert_eq!(least_loaded(&[], &load(&[])), None);
    }

    #[test]
    fn colocated_tables_follow_the_group() {
        let group = [(0, 1), (1, 2), (2, 1), (3, 2)];
        assert_eq!(place_in_group(4, &group), Some(vec![1, 2, 1, 2]));
        // Several tables of the group report the same node per index.
        let doubled = [(0, 1), (1, 2), (0, 1), (1, 2)];
        assert_eq!(place_in_group(2, &doubled), Some(vec![1, 2]));
    }

    #[test]
    fn inconsistent_or_incomplete_groups_are_refused() {
        assert_eq!(place_in_group(3, &[(0, 1), (1, 2)]), None);
        assert_eq!(place_in_group(2, &[(0, 1), (0, 2), (1, 2)]), None);
        assert_eq!(place_in_group(2, &[(0, 1), (5, 2)]), None);
    }
}
