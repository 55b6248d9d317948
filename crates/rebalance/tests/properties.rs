//! Property tests of the planner on random clusters: random nodes (some inactive or draining,
//! various capacities), random colocation groups and sizes, every kind of strategy (custom ones
//! with disallowed placements and capacity overrides), random thresholds.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;

use common::{allowed, capacity, colocation_counts, cost, loads, plan_loads, replay, spread};
use shoal_rebalance::{
    plan, CostKind, CustomStrategy, NodeState, Plan, PlanError, PlanOptions, ShardGroup,
    Strategy as Rebalance,
};

#[derive(Clone, Debug)]
struct Case {
    nodes: Vec<NodeState>,
    groups: Vec<ShardGroup>,
    options: PlanOptions,
    /// Drives the shuffles of the determinism check.
    seed: u64,
}

/// Nodes with distinct ids; `uniform` gives every node capacity 1 and keeps them all active
/// (some may still be draining).
fn arb_nodes(uniform: bool) -> impl Strategy<Value = Vec<NodeState>> {
    let ids = proptest::sample::subsequence((1..=20).collect::<Vec<i32>>(), 1..=7);
    ids.prop_flat_map(move |ids| {
        let n = ids.len();
        (
            Just(ids),
            prop::collection::vec(
                (
                    prop::bool::weighted(0.9),
                    prop::bool::weighted(0.8),
                    prop::sample::select(vec![0.5, 1.0, 1.0, 2.0, 3.0]),
                ),
                n,
            ),
        )
            .prop_map(move |(ids, flags)| {
                ids.into_iter()
                    .zip(flags)
                    .map(|(node_id, (active, should_have_shards, cap))| NodeState {
                        node_id,
                        is_active: uniform || active,
                        should_have_shards,
                        capacity: if uniform { 1.0 } else { cap },
                    })
                    .collect()
            })
    })
}

/// 1 to 5 colocation groups of 1 to 12 shard groups each, on random nodes.
fn arb_groups(node_ids: Vec<i32>) -> impl Strategy<Value = Vec<ShardGroup>> {
    arb_groups_sized(node_ids, 1..5, 1..12)
}

fn arb_groups_sized(
    node_ids: Vec<i32>,
    colocations: std::ops::Range<usize>,
    per_colocation: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<ShardGroup>> {
    prop::collection::vec(
        prop::collection::vec((any::<Index>(), 0i64..1000), per_colocation),
        colocations,
    )
    .prop_map(move |colocations| {
        let mut groups = Vec::new();
        for (c, members) in colocations.into_iter().enumerate() {
            for (i, (pick, size)) in members.into_iter().enumerate() {
                groups.push(common::group(
                    c as i32 + 1,
                    i as i32,
                    *pick.get(&node_ids),
                    size,
                ));
            }
        }
        groups
    })
}

fn arb_strategy(node_ids: Vec<i32>) -> impl Strategy<Value = Rebalance> {
    let pairs: Vec<(i32, i32)> = (1..=5)
        .flat_map(|c| node_ids.iter().map(move |&n| (c, n)))
        .collect();
    let overrides = node_ids.clone();
    let custom = (
        prop_oneof![
            Just(CostKind::ShardCount),
            (0i64..300).prop_map(|base_cost_bytes| CostKind::DiskSize { base_cost_bytes }),
        ],
        proptest::sample::subsequence(pairs.clone(), 0..=pairs.len().min(6)),
        proptest::sample::subsequence(overrides.clone(), 0..=overrides.len()),
        prop::sample::select(vec![0.5, 2.0, 4.0]),
        0.0..0.3f64,
        0.0..1.0f64,
    )
        .prop_map(
            |(cost, disallowed, overridden, factor, threshold, improvement)| {
                Rebalance::Custom(CustomStrategy {
                    name: "random".to_string(),
                    cost,
                    capacity_overrides: overridden.into_iter().map(|n| (n, factor)).collect(),
                    disallowed: disallowed.into_iter().collect(),
                    default_threshold: threshold,
                    minimum_threshold: threshold / 2.0,
                    improvement_threshold: improvement,
                })
            },
        );
    prop_oneof![
        Just(Rebalance::ByShardCount),
        (0i64..300).prop_map(|base_cost_bytes| Rebalance::ByDiskSize { base_cost_bytes }),
        custom,
    ]
}

fn arb_case() -> impl Strategy<Value = Case> {
    arb_nodes(false).prop_flat_map(|nodes| {
        let ids: Vec<i32> = nodes.iter().map(|n| n.node_id).collect();
        (
            Just(nodes),
            arb_groups(ids.clone()),
            arb_strategy(ids),
            prop::option::of(0.0..0.4f64),
            prop::option::of(0.0..1.0f64),
            any::<u64>(),
        )
            .prop_map(
                |(nodes, groups, strategy, threshold, improvement, seed)| Case {
                    nodes,
                    groups,
                    options: PlanOptions {
                        threshold,
                        improvement_threshold: improvement,
                        ..PlanOptions::new(strategy)
                    },
                    seed,
                },
            )
    })
}

/// By shard count, capacity 1 everywhere, nothing disallowed, default thresholds.
fn arb_uniform_count_case() -> impl Strategy<Value = Case> {
    arb_nodes(true).prop_flat_map(|nodes| {
        let ids: Vec<i32> = nodes.iter().map(|n| n.node_id).collect();
        (Just(nodes), arb_groups(ids), any::<u64>()).prop_map(|(nodes, groups, seed)| Case {
            nodes,
            groups,
            options: PlanOptions::new(Rebalance::ByShardCount),
            seed,
        })
    })
}

/// Bigger clusters, fewer cases: up to 40 nodes (a few of them empty new ones) and 40
/// colocation groups of up to 60 shard groups, on the first few nodes.
fn arb_large_case() -> impl Strategy<Value = Case> {
    (2usize..40, 1usize..8, any::<bool>()).prop_flat_map(|(node_count, loaded, by_count)| {
        let nodes: Vec<NodeState> = (1..=node_count as i32).map(NodeState::new).collect();
        let loaded_ids: Vec<i32> = (1..=loaded.min(node_count) as i32).collect();
        let strategy = if by_count {
            Rebalance::ByShardCount
        } else {
            Rebalance::ByDiskSize {
                base_cost_bytes: 100,
            }
        };
        (
            Just(nodes),
            arb_groups_sized(loaded_ids, 1..40, 1..60),
            Just(strategy),
            any::<u64>(),
        )
            .prop_map(|(nodes, groups, strategy, seed)| Case {
                nodes,
                groups,
                options: PlanOptions::new(strategy),
                seed,
            })
    })
}

/// A deterministic shuffle driven by the seed.
fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut keyed: Vec<(u64, T)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut x = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            (x ^ (x >> 29), item.clone())
        })
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, item)| item).collect()
}

fn node(case: &Case, node_id: i32) -> &NodeState {
    case.nodes
        .iter()
        .find(|n| n.node_id == node_id)
        .expect("known node")
}

fn misplaced(case: &Case) -> BTreeSet<(i32, i32)> {
    let strategy = &case.options.strategy;
    case.groups
        .iter()
        .filter(|g| !allowed(strategy, node(case, g.node_id), g.colocation_id))
        .map(|g| (g.colocation_id, g.shard_index))
        .collect()
}

/// The acceptance rule, written out again from the documentation.
fn worth_moving(source: (f64, f64), target: (f64, f64), cost: f64, theta: f64) -> bool {
    let (source_load, source_capacity) = source;
    let (target_load, target_capacity) = target;
    let source_before = source_load / source_capacity;
    let target_before = target_load / target_capacity;
    let source_after = (source_load - cost) / source_capacity;
    let target_after = (target_load + cost) / target_capacity;
    if cost <= 0.0 || target_after >= source_before {
        return cost > 0.0 && target_after <= source_after;
    }
    if target_after <= source_after {
        return true;
    }
    let improvement = (source_before - target_after).max(source_after - target_before);
    let added = (target_after - target_before).min(source_before - source_after);
    improvement >= theta * added
}

/// Runs the plan and checks what holds for every input. Returns the plan when there is one.
fn check_valid(case: &Case) -> Result<Option<Plan>, TestCaseError> {
    let strategy = &case.options.strategy;
    let result = plan(&case.nodes, &case.groups, &case.options);
    let plan = match result {
        Ok(plan) => plan,
        Err(PlanError::NoAllowedNode {
            colocation_id,
            shard_index,
            node_id,
        }) => {
            // Only when the group must leave and nothing allows it.
            let group = case
                .groups
                .iter()
                .find(|g| (g.colocation_id, g.shard_index) == (colocation_id, shard_index))
                .expect("the error names a real group");
            prop_assert_eq!(group.node_id, node_id);
            prop_assert!(!allowed(strategy, node(case, node_id), colocation_id));
            prop_assert!(case
                .nodes
                .iter()
                .all(|n| !allowed(strategy, n, colocation_id)));
            return Ok(None);
        }
        Err(error) => return Err(TestCaseError::fail(format!("unexpected error: {error}"))),
    };

    // Each move starts where its group is, and the groups never revisit a node.
    let (placement, paths) = replay(&case.groups, &plan.moves).map_err(TestCaseError::fail)?;
    for mv in &plan.moves {
        prop_assert!(
            allowed(strategy, node(case, mv.to), mv.colocation_id),
            "{:?} goes where it may not be",
            mv
        );
    }
    for (group, path) in &paths {
        let distinct: BTreeSet<&i32> = path.iter().collect();
        prop_assert_eq!(
            distinct.len(),
            path.len(),
            "{:?} revisits: {:?}",
            group,
            path
        );
    }

    // before and after are the input's loads and the replayed loads.
    prop_assert_eq!(
        plan_loads(&plan.before),
        loads(&case.nodes, case.groups.iter().cloned(), strategy)
    );
    prop_assert_eq!(
        plan_loads(&plan.after),
        loads(&case.nodes, placement.values().cloned(), strategy)
    );
    for load in plan.after.iter().chain(&plan.before) {
        let cap = capacity(strategy, node(case, load.node_id));
        prop_assert_eq!(load.utilisation, load.cost as f64 / cap);
    }
    // Groups that had to leave come first.
    let must_leave = misplaced(case);
    let leaving = plan
        .moves
        .iter()
        .take_while(|mv| must_leave.contains(&(mv.colocation_id, mv.shard_index)))
        .count();
    prop_assert!(plan.moves[leaving..]
        .iter()
        .all(|mv| !must_leave.contains(&(mv.colocation_id, mv.shard_index))));
    if case.options.max_moves.is_some() {
        return Ok(Some(plan));
    }

    // Nothing is left where it may not be.
    for group in placement.values() {
        prop_assert!(
            allowed(strategy, node(case, group.node_id), group.colocation_id),
            "{:?} left where it may not be",
            group
        );
    }
    if case.options.drain_only {
        return Ok(Some(plan));
    }

    // Local optimality: while a node is outside the band, no group on a node above the band's
    // bottom is worth moving to a less utilised node below the band's top.
    let eligible: Vec<&NodeState> = case.nodes.iter().filter(|n| n.is_eligible()).collect();
    let total_capacity: f64 = eligible.iter().map(|n| capacity(strategy, n)).sum();
    let total_cost: i64 = case.groups.iter().map(|g| cost(strategy, g)).sum();
    let average = total_cost as f64 / total_capacity;
    let (lower, upper) = (
        average * (1.0 - plan.threshold),
        average * (1.0 + plan.threshold),
    );
    let after = plan_loads(&plan.after);
    let fill = |n: &NodeState| (after[&n.node_id].0 as f64, capacity(strategy, n));
    let util = |n: &NodeState| fill(n).0 / fill(n).1;
    let balanced = eligible
        .iter()
        .all(|n| util(n) >= lower && util(n) <= upper);
    if !balanced {
        for source in &eligible {
            for target in &eligible {
                let (us, ut) = (util(source), util(target));
                if us <= lower || ut >= upper || (ut >= lower && us <= upper) || ut >= us {
                    continue;
                }
                for group in placement.values() {
                    if group.node_id != source.node_id
                        || !allowed(strategy, target, group.colocation_id)
                    {
                        continue;
                    }
                    prop_assert!(
                        !worth_moving(
                            fill(source),
                            fill(target),
                            cost(strategy, group) as f64,
                            plan.improvement_threshold
                        ),
                        "{:?} could still move from {} to {}",
                        group,
                        source.node_id,
                        target.node_id
                    );
                }
            }
        }
    }
    Ok(Some(plan))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    /// Valid moves, each group at most once, exact before/after, nothing misplaced, local
    /// optimality, and the same plan for the same input in another order.
    #[test]
    fn plans_are_valid_complete_and_deterministic(case in arb_case()) {
        let Some(expected) = check_valid(&case)? else { return Ok(()) };
        let nodes = shuffled(&case.nodes, case.seed);
        let groups = shuffled(&case.groups, case.seed.rotate_left(17));
        prop_assert_eq!(plan(&nodes, &groups, &case.options).unwrap(), expected);
    }

    /// With drain_only, exactly the misplaced groups move, once each.
    #[test]
    fn drain_only_moves_exactly_the_misplaced_groups(case in arb_case()) {
        let case = Case { options: PlanOptions { drain_only: true, ..case.options.clone() }, ..case };
        let Some(plan) = check_valid(&case)? else { return Ok(()) };
        let moved: Vec<(i32, i32)> =
            plan.moves.iter().map(|mv| (mv.colocation_id, mv.shard_index)).collect();
        let moved_set: BTreeSet<(i32, i32)> = moved.iter().copied().collect();
        prop_assert_eq!(moved.len(), moved_set.len());
        prop_assert_eq!(moved_set, misplaced(&case));
    }

    /// A plan cut by max_moves is the start of the full plan.
    #[test]
    fn max_moves_gives_a_prefix(case in arb_case(), cut in any::<Index>()) {
        let Some(full) = check_valid(&case)? else { return Ok(()) };
        let limit = cut.index(full.moves.len() + 1);
        let capped_case = Case {
            options: PlanOptions { max_moves: Some(limit), ..case.options.clone() },
            ..case
        };
        let capped = check_valid(&capped_case)?.expect("same input");
        prop_assert_eq!(&capped.moves[..], &full.moves[..limit]);
    }

    /// By shard count on equal nodes with nothing disallowed: every node that may have shards
    /// holds within one group of every other, and so does every colocation group.
    #[test]
    fn shard_count_is_even_globally_and_per_colocation(case in arb_uniform_count_case()) {
        check_even_counts(&case)?;
    }

    /// Planning again from the result moves nothing: a balanced cluster yields no move.
    #[test]
    fn replanning_the_result_moves_nothing(case in arb_case()) {
        check_replan(&case)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The same checks on bigger clusters.
    #[test]
    fn large_clusters(case in arb_large_case()) {
        check_valid(&case)?;
        check_replan(&case)?;
        if case.options.strategy == Rebalance::ByShardCount {
            check_even_counts(&case)?;
        }
    }
}

fn check_replan(case: &Case) -> Result<(), TestCaseError> {
    let Some(first) = check_valid(case)? else {
        return Ok(());
    };
    let (placement, _) = replay(&case.groups, &first.moves).unwrap();
    let groups: Vec<ShardGroup> = placement.into_values().collect();
    let second = plan(&case.nodes, &groups, &case.options).unwrap();
    prop_assert!(second.moves.is_empty(), "{:?}", second.moves);
    Ok(())
}

fn check_even_counts(case: &Case) -> Result<(), TestCaseError> {
    let Some(plan) = check_valid(case)? else {
        return Ok(());
    };
    let eligible: Vec<i32> = case
        .nodes
        .iter()
        .filter(|n| n.is_eligible())
        .map(|n| n.node_id)
        .collect();
    let per_node: BTreeMap<i32, usize> = plan.after.iter().map(|l| (l.node_id, l.groups)).collect();
    prop_assert!(
        spread(eligible.iter().map(|n| per_node[n])) <= 1,
        "global: {:?}",
        per_node
    );
    let (placement, _) = replay(&case.groups, &plan.moves).unwrap();
    for (colocation, counts) in colocation_counts(&placement, &eligible) {
        prop_assert!(
            spread(counts.values().copied()) <= 1,
            "colocation {}: {:?}",
            colocation,
            counts
        );
    }
    Ok(())
}
