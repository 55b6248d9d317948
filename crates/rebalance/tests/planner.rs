//! Planner unit tests: one scenario each, through the public API.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    colocation_counts, draining, group, groups_per_node, inactive, nodes, replay, round_robin,
    spread, GIB,
};
use shoal_rebalance::{
    plan, CostKind, CustomStrategy, NodeState, Plan, PlanError, PlanOptions, ShardGroup, Strategy,
};

fn by_count() -> PlanOptions {
    PlanOptions::new(Strategy::ByShardCount)
}

fn by_disk(base_cost_bytes: i64) -> PlanOptions {
    PlanOptions::new(Strategy::ByDiskSize { base_cost_bytes })
}

fn custom(disallowed: &[(i32, i32)], capacity_overrides: &[(i32, f64)]) -> Strategy {
    Strategy::Custom(CustomStrategy {
        name: "test".to_string(),
        cost: CostKind::ShardCount,
        capacity_overrides: capacity_overrides.iter().copied().collect(),
        disallowed: disallowed.iter().copied().collect(),
        default_threshold: 0.0,
        minimum_threshold: 0.0,
        improvement_threshold: 0.0,
    })
}

fn run(nodes: &[NodeState], groups: &[ShardGroup], options: &PlanOptions) -> Plan {
    let plan = plan(nodes, groups, options).expect("valid input");
    replay(groups, &plan.moves).expect("moves replay");
    plan
}

#[test]
fn a_balanced_cluster_yields_no_move() {
    let node_list = nodes([1, 2, 3]);
    let groups = round_robin(4, 6, &[1, 2, 3], GIB);
    assert!(run(&node_list, &groups, &by_count()).moves.is_empty());
    assert!(run(
        &node_list,
        &groups,
        &PlanOptions::new(Strategy::by_disk_size())
    )
    .moves
    .is_empty());
}

#[test]
fn an_empty_cluster_yields_an_empty_plan() {
    let plan = run(&[], &[], &by_count());
    assert!(plan.moves.is_empty() && plan.before.is_empty() && plan.after.is_empty());
    let plan = run(&nodes([1, 2]), &[], &by_count());
    assert!(plan.moves.is_empty());
}

#[test]
fn a_new_node_gets_its_share_by_shard_count() {
    let node_list = nodes([1, 2, 3, 4]);
    let groups = round_robin(4, 6, &[1, 2, 3], GIB);
    let plan = run(&node_list, &groups, &by_count());

    assert_eq!(
        plan.moves.len(),
        6,
        "24 groups on 4 nodes: 6 go to the new node"
    );
    assert!(plan.moves.iter().all(|mv| mv.to == 4));
    assert_eq!(
        groups_per_node(&plan),
        BTreeMap::from([(1, 6), (2, 6), (3, 6), (4, 6)])
    );
    let (placement, _) = replay(&groups, &plan.moves).unwrap();
    for (colocation, per_node) in colocation_counts(&placement, &[1, 2, 3, 4]) {
        assert!(
            spread(per_node.values().copied()) <= 1,
            "colocation {colocation}: {per_node:?}"
        );
    }
}

#[test]
fn a_new_node_gets_its_share_by_disk_size() {
    let node_list = nodes([1, 2, 3, 4]);
    let groups: Vec<ShardGroup> = (0..30)
        .map(|i| group(1 + i % 3, i, 1 + i % 3, (1 + (i as i64 * 7) % 5) * GIB))
        .collect();
    let plan = run(
        &node_list,
        &groups,
        &PlanOptions::new(Strategy::by_disk_size()),
    );

    // Mostly into the new node; an old node may also even out with another.
    assert!(plan.moves.iter().filter(|mv| mv.to == 4).count() * 2 > plan.moves.len());
    let average = plan.after.iter().map(|l| l.utilisation).sum::<f64>() / 4.0;
    for load in &plan.after {
        assert!(
            (load.utilisation - average).abs() <= 0.1 * average,
            "node {} at {} vs average {average}",
            load.node_id,
            load.utilisation
        );
    }
}

#[test]
fn distributed_schemas_are_spread_like_any_group() {
    // Ten schemas, one shard group each, all on node 1.
    let groups: Vec<ShardGroup> = (1..=10).map(|c| group(c, 0, 1, GIB)).collect();
    let plan = run(&nodes([1, 2]), &groups, &by_count());
    assert_eq!(groups_per_node(&plan), BTreeMap::from([(1, 5), (2, 5)]));
}

#[test]
fn each_colocation_group_is_spread_even_when_totals_are_even() {
    // Globally even (10 and 10), but each colocation group sits on one node.
    let mut groups: Vec<ShardGroup> = (0..10).map(|i| group(1, i, 1, GIB)).collect();
    groups.extend((0..10).map(|i| group(2, i, 2, GIB)));
    let plan = run(&nodes([1, 2]), &groups, &by_count());

    let (placement, _) = replay(&groups, &plan.moves).unwrap();
    for (colocation, per_node) in colocation_counts(&placement, &[1, 2]) {
        assert_eq!(
            spread(per_node.values().copied()),
            0,
            "colocation {colocation}"
        );
    }
    assert_eq!(groups_per_node(&plan), BTreeMap::from([(1, 10), (2, 10)]));
    assert_eq!(plan.moves.len(), 10);
}

#[test]
fn drain_only_empties_the_node_and_moves_nothing_else() {
    // Nodes 1 and 2 are unbalanced, node 3 is being drained.
    let node_list = vec![NodeState::new(1), NodeState::new(2), draining(3)];
    let mut groups: Vec<ShardGroup> = (0..8).map(|i| group(1, i, 1, GIB)).collect();
    groups.extend((8..10).map(|i| group(1, i, 2, GIB)));
    groups.extend((0..4).map(|i| group(2, i, 3, GIB)));
    let options = PlanOptions {
        drain_only: true,
        ..by_count()
    };
    let plan = run(&node_list, &groups, &options);

    assert_eq!(plan.moves.len(), 4);
    assert!(plan
        .moves
        .iter()
        .all(|mv| mv.from == 3 && mv.colocation_id == 2));
    assert_eq!(
        plan.after.iter().find(|l| l.node_id == 3).unwrap().groups,
        0
    );
    // By shard count the drained colocation group is spread, the emptier node first.
    assert_eq!(plan.moves[0].to, 2);
    assert_eq!(plan.moves.iter().filter(|mv| mv.to == 2).count(), 2);
}

#[test]
fn drain_only_on_an_unbalanced_cluster_without_draining_nodes_does_nothing() {
    let groups: Vec<ShardGroup> = (0..10).map(|i| group(1, i, 1, GIB)).collect();
    let options = PlanOptions {
        drain_only: true,
        ..by_count()
    };
    assert!(run(&nodes([1, 2]), &groups, &options).moves.is_empty());
}

#[test]
fn a_full_rebalance_drains_first_then_balances() {
    let node_list = vec![
        NodeState::new(1),
        NodeState::new(2),
        draining(3),
        inactive(4),
    ];
    let mut groups = round_robin(3, 8, &[1, 3, 4], GIB);
    groups.push(group(9, 0, 1, GIB));
    let plan = run(&node_list, &groups, &by_count());

    let on_3_or_4 = groups.iter().filter(|g| g.node_id >= 3).count();
    assert!(plan.moves[..on_3_or_4].iter().all(|mv| mv.from >= 3));
    assert!(plan.moves.iter().all(|mv| mv.to <= 2));
    let per_node = groups_per_node(&plan);
    assert_eq!((per_node[&3], per_node[&4]), (0, 0));
    assert!(per_node[&1].abs_diff(per_node[&2]) <= 1, "{per_node:?}");
}

#[test]
fn disallowed_placements_are_honoured_and_existing_ones_moved_away() {
    // Colocation group 1 may not be on node 3; colocation group 2 may not be on node 2 but
    // has groups there.
    let strategy = custom(&[(1, 3), (2, 2)], &[]);
    let mut groups: Vec<ShardGroup> = (0..9).map(|i| group(1, i, 1, GIB)).collect();
    groups.extend((0..3).map(|i| group(2, i, 2, GIB)));
    let plan = run(&nodes([1, 2, 3]), &groups, &PlanOptions::new(strategy));

    for mv in &plan.moves {
        assert!(!(mv.colocation_id == 1 && mv.to == 3), "{mv:?}");
        assert!(!(mv.colocation_id == 2 && mv.to == 2), "{mv:?}");
    }
    let (placement, _) = replay(&groups, &plan.moves).unwrap();
    assert!(placement
        .values()
        .all(|g| !(g.colocation_id == 2 && g.node_id == 2)));
    assert!(placement
        .values()
        .all(|g| !(g.colocation_id == 1 && g.node_id == 3)));
    // Node 3 can only hold colocation group 2 (3 groups); nodes 1 and 2 share the other 9.
    let per_node = groups_per_node(&plan);
    assert_eq!(per_node[&3], 3);
    assert_eq!(per_node[&1].abs_diff(per_node[&2]), 1, "{per_node:?}");
}

#[test]
fn a_group_with_nowhere_to_go_is_an_error() {
    let strategy = custom(&[(1, 1), (1, 2)], &[]);
    let node_list = vec![NodeState::new(1), draining(2)];
    let groups = vec![group(1, 0, 2, GIB)];
    assert_eq!(
        plan(&node_list, &groups, &PlanOptions::new(strategy)),
        Err(PlanError::NoAllowedNode {
            colocation_id: 1,
            shard_index: 0,
            node_id: 2
        })
    );
}

#[test]
fn disk_size_moves_the_biggest_group_that_fits() {
    // 4+4+1 GiB against 1 GiB: moving one 4 GiB group evens the nodes at 5 and 5.
    let groups = vec![
        group(1, 0, 1, 4 * GIB),
        group(1, 1, 1, 4 * GIB),
        group(2, 0, 1, GIB),
        group(2, 1, 2, GIB),
    ];
    let plan = run(&nodes([1, 2]), &groups, &by_disk(0));
    assert_eq!(plan.moves.len(), 1);
    assert_eq!(plan.moves[0].size_bytes, 4 * GIB);
    assert_eq!(plan.after[0].cost, plan.after[1].cost);
}

#[test]
fn disk_size_leaves_a_huge_group_that_cannot_help() {
    // 10 GiB plus ten 100 MiB groups against an empty node: the small ones move, the big one
    // would only swap the imbalance.
    let mut groups = vec![group(1, 0, 1, 10 * GIB)];
    groups.extend((0..10).map(|i| group(2, i, 1, GIB / 10)));
    let plan = run(&nodes([1, 2]), &groups, &by_disk(0));
    assert_eq!(plan.moves.len(), 10);
    assert!(plan.moves.iter().all(|mv| mv.colocation_id == 2));
}

#[test]
fn the_improvement_threshold_prevents_pointless_moves() {
    // 30+30 against 20: moving 30 would leave 30 and 50. The pair's maximum falls from 60 to
    // 50 for 30 moved: a ratio of 1/3.
    let groups = vec![
        group(1, 0, 1, 30 * GIB),
        group(1, 1, 1, 30 * GIB),
        group(2, 0, 2, 20 * GIB),
    ];
    let node_list = nodes([1, 2]);
    assert!(run(&node_list, &groups, &by_disk(0)).moves.is_empty());
    let lenient = PlanOptions {
        improvement_threshold: Some(0.3),
        ..by_disk(0)
    };
    assert_eq!(run(&node_list, &groups, &lenient).moves.len(), 1);
}

#[test]
fn the_threshold_band_stops_the_planner() {
    // 11 against 9 (avg 10): inside a 10% band, outside a 5% one.
    let mut groups: Vec<ShardGroup> = (0..11).map(|i| group(1, i, 1, GIB)).collect();
    groups.extend((0..9).map(|i| group(2, i, 2, GIB)));
    let node_list = nodes([1, 2]);
    assert!(run(&node_list, &groups, &by_disk(0)).moves.is_empty());
    let strict = PlanOptions {
        threshold: Some(0.05),
        ..by_disk(0)
    };
    assert_eq!(run(&node_list, &groups, &strict).moves.len(), 1);
}

#[test]
fn a_threshold_below_the_minimum_is_raised() {
    let options = PlanOptions {
        threshold: Some(0.001),
        ..PlanOptions::new(Strategy::by_disk_size())
    };
    let plan = run(&nodes([1]), &[], &options);
    assert_eq!(plan.threshold, 0.01);
    assert_eq!(plan.improvement_threshold, 0.5);
}

#[test]
fn capacity_weights_the_share() {
    let node_list = vec![
        NodeState {
            capacity: 2.0,
            ..NodeState::new(1)
        },
        NodeState::new(2),
    ];
    let groups: Vec<ShardGroup> = (0..9).map(|i| group(1, i, 2, GIB)).collect();
    let plan = run(&node_list, &groups, &by_count());
    assert_eq!(groups_per_node(&plan), BTreeMap::from([(1, 6), (2, 3)]));

    // The same through a custom strategy's override.
    let strategy = custom(&[], &[(1, 2.0)]);
    let plan = run(&nodes([1, 2]), &groups, &PlanOptions::new(strategy));
    assert_eq!(groups_per_node(&plan), BTreeMap::from([(1, 6), (2, 3)]));
}

#[test]
fn the_same_input_in_another_order_gives_the_same_plan() {
    let node_list = vec![
        NodeState::new(3),
        draining(1),
        NodeState::new(2),
        NodeState::new(4),
    ];
    let groups: Vec<ShardGroup> = (0..40)
        .map(|i| group(1 + i % 4, i, 1 + i % 3, (1 + (i as i64 * 13) % 7) * GIB))
        .collect();
    for options in [by_count(), PlanOptions::new(Strategy::by_disk_size())] {
        let expected = run(&node_list, &groups, &options);
        assert!(!expected.moves.is_empty());
        let mut reversed_nodes = node_list.clone();
        reversed_nodes.reverse();
        let mut reversed_groups = groups.clone();
        reversed_groups.reverse();
        assert_eq!(
            plan(&reversed_nodes, &reversed_groups, &options).unwrap(),
            expected
        );
        let mut interleaved = groups.clone();
        interleaved.sort_by_key(|g| (g.shard_index % 5, -g.colocation_id));
        assert_eq!(plan(&node_list, &interleaved, &options).unwrap(), expected);
    }
}

#[test]
fn max_moves_truncates_the_plan() {
    let groups: Vec<ShardGroup> = (0..12).map(|i| group(1, i, 1, GIB)).collect();
    let node_list = nodes([1, 2, 3]);
    let full = run(&node_list, &groups, &by_count());
    assert_eq!(full.moves.len(), 8);
    let options = PlanOptions {
        max_moves: Some(3),
        ..by_count()
    };
    let capped = run(&node_list, &groups, &options);
    assert_eq!(capped.moves, full.moves[..3]);
    assert_eq!(capped.after.iter().map(|l| l.groups).sum::<usize>(), 12);
}

#[test]
fn before_and_after_describe_every_node() {
    let node_list = vec![NodeState::new(2), draining(1)];
    let groups = vec![group(1, 0, 1, 5), group(1, 1, 2, 7)];
    let plan = run(&node_list, &groups, &by_disk(10));
    let ids: Vec<i32> = plan.before.iter().map(|l| l.node_id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!((plan.before[0].cost, plan.before[1].cost), (15, 17));
    assert_eq!((plan.after[0].cost, plan.after[1].cost), (0, 32));
    assert_eq!(plan.after[1].groups, 2);
    assert_eq!(plan.after[1].utilisation, 32.0);
}

#[test]
fn invalid_input_is_refused() {
    let one = nodes([1]);
    let options = by_count();
    assert_eq!(
        plan(&nodes([1, 1]), &[], &options),
        Err(PlanError::DuplicateNode { node_id: 1 })
    );
    assert_eq!(
        plan(&one, &[group(1, 0, 1, 0), group(1, 0, 1, 0)], &options),
        Err(PlanError::DuplicateGroup {
            colocation_id: 1,
            shard_index: 0
        })
    );
    assert_eq!(
        plan(&one, &[group(1, 0, 7, 0)], &options),
        Err(PlanError::UnknownNode {
            colocation_id: 1,
            shard_index: 0,
            node_id: 7
        })
    );
    assert_eq!(
        plan(&one, &[group(1, 0, 1, -1)], &options),
        Err(PlanError::NegativeSize {
            colocation_id: 1,
            shard_index: 0,
            size_bytes: -1
        })
    );
    let zero = vec![NodeState {
        capacity: 0.0,
        ..NodeState::new(1)
    }];
    assert!(matches!(
        plan(&zero, &[], &options),
        Err(PlanError::InvalidCapacity { node_id: 1, .. })
    ));
    let negative = PlanOptions {
        threshold: Some(-0.1),
        ..by_count()
    };
    assert!(matches!(
        plan(&one, &[], &negative),
        Err(PlanError::InvalidThreshold {
            name: "threshold",
            ..
        })
    ));
    let nan = PlanOptions {
        improvement_threshold: Some(f64::NAN),
        ..by_count()
    };
    assert!(matches!(
        plan(&one, &[], &nan),
        Err(PlanError::InvalidThreshold {
            name: "improvement_threshold",
            ..
        })
    ));
    assert!(matches!(
        plan(&one, &[], &by_disk(-1)),
        Err(PlanError::InvalidStrategy { .. })
    ));
    assert_eq!(
        plan(
            &one,
            &[group(1, 0, 1, i64::MAX), group(1, 1, 1, 1)],
            &by_disk(0)
        ),
        Err(PlanError::CostOverflow)
    );
}

#[test]
fn strategies_round_trip_through_json() {
    let strategy = Strategy::Custom(CustomStrategy {
        name: "gold_nodes".to_string(),
        cost: CostKind::DiskSize {
            base_cost_bytes: 1024,
        },
        capacity_overrides: [(1, 2.5)].into_iter().collect(),
        disallowed: BTreeSet::from([(10, 1), (11, 2)]),
        default_threshold: 0.2,
        minimum_threshold: 0.05,
        improvement_threshold: 0.4,
    });
    for strategy in [strategy, Strategy::ByShardCount, Strategy::by_disk_size()] {
        let json = serde_json::to_string(&strategy).unwrap();
        assert_eq!(
            serde_json::from_str::<Strategy>(&json).unwrap(),
            strategy,
            "{json}"
        );
    }
    assert_eq!(
        serde_json::to_string(&Strategy::ByShardCount).unwrap(),
        r#"{"strategy":"by_shard_count"}"#
    );
    assert_eq!(
        Strategy::builtin("by_disk_size"),
        Some(Strategy::by_disk_size())
    );
    assert_eq!(Strategy::builtin("nope"), None);
}

#[test]
fn plans_round_trip_through_json() {
    let groups = round_robin(2, 4, &[1], GIB);
    let plan = run(&nodes([1, 2]), &groups, &by_count());
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    let node: NodeState =
        serde_json::from_str(r#"{"node_id":3,"is_active":true,"should_have_shards":true}"#)
            .unwrap();
    assert_eq!(node.capacity, 1.0);
}
