//! Task-graph tests: each flag combination on hand-made plans, the DAG and ordering invariants
//! on random plans, and a plan from the planner end to end.

mod common;

use std::collections::BTreeSet;

use proptest::prelude::*;

use common::{group, nodes, GIB};
use shoal_rebalance::{
    build_task_graph, plan, GraphOptions, Move, Plan, PlanOptions, ReferenceCopy, ShardGroup,
    Strategy as Rebalance, TaskOp, TaskSpec,
};

const SEQUENTIAL: GraphOptions = GraphOptions {
    parallel_colocated: false,
    parallel_reference: false,
};
const PARALLEL_REFERENCE: GraphOptions = GraphOptions {
    parallel_colocated: false,
    parallel_reference: true,
};
const PARALLEL_COLOCATED: GraphOptions = GraphOptions {
    parallel_colocated: true,
    parallel_reference: false,
};
const BOTH: GraphOptions = GraphOptions {
    parallel_colocated: true,
    parallel_reference: true,
};
const ALL_OPTIONS: [GraphOptions; 4] = [SEQUENTIAL, PARALLEL_REFERENCE, PARALLEL_COLOCATED, BOTH];

fn mv(colocation_id: i32, shard_index: i32, from: i32, to: i32) -> Move {
    Move {
        colocation_id,
        shard_index,
        anchor_shard_id: colocation_id as i64 * 100 + shard_index as i64,
        from,
        to,
        size_bytes: GIB,
    }
}

fn plan_of(moves: Vec<Move>) -> Plan {
    Plan {
        moves,
        before: Vec::new(),
        after: Vec::new(),
        threshold: 0.0,
        improvement_threshold: 0.0,
    }
}

fn copy(table_id: i32, node_id: i32) -> ReferenceCopy {
    ReferenceCopy { table_id, node_id }
}

fn deps(tasks: &[TaskSpec]) -> Vec<Vec<usize>> {
    tasks.iter().map(|task| task.depends_on.clone()).collect()
}

/// Moves 0..6 exercise every parallel rule:
/// - 0 and 1 go into node 3; 2 leaves node 3, so 3 (into node 3 again) waits for 2;
/// - 4 moves group (1, 0) again, so it waits for 0, and goes into node 2, which 1 left;
/// - 5 touches other nodes and waits for nothing.
fn sample_moves() -> Vec<Move> {
    vec![
        mv(1, 0, 1, 3),
        mv(1, 1, 2, 3),
        mv(2, 0, 3, 4),
        mv(2, 1, 1, 3),
        mv(1, 0, 3, 2),
        mv(3, 0, 5, 6),
    ]
}

fn sample_copies() -> Vec<ReferenceCopy> {
    // Unsorted, with a duplicate: the graph must not care.
    vec![copy(20, 4), copy(10, 4), copy(10, 3), copy(20, 4)]
}

#[test]
fn sequential_without_reference_tables_is_a_chain() {
    let tasks = build_task_graph(&plan_of(sample_moves()), &[], &SEQUENTIAL);
    assert_eq!(tasks.len(), 6);
    assert_eq!(
        deps(&tasks),
        vec![vec![], vec![0], vec![1], vec![2], vec![3], vec![4]]
    );
    for (task, expected) in tasks.iter().zip(sample_moves()) {
        assert_eq!(task.op, TaskOp::Move(expected.clone()));
        let mut involved = vec![expected.from, expected.to];
        involved.sort();
        assert_eq!(task.nodes_involved, involved);
    }
}

#[test]
fn sequential_copies_every_reference_table_in_one_task_first() {
    let tasks = build_task_graph(&plan_of(sample_moves()), &sample_copies(), &SEQUENTIAL);
    assert_eq!(tasks.len(), 7);
    assert_eq!(
        tasks[0].op,
        TaskOp::CopyReferenceTables {
            copies: vec![copy(10, 3), copy(10, 4), copy(20, 4)]
        }
    );
    assert_eq!(tasks[0].nodes_involved, vec![3, 4]);
    assert_eq!(
        deps(&tasks),
        vec![vec![], vec![0], vec![1], vec![2], vec![3], vec![4], vec![5]]
    );
}

#[test]
fn reference_tables_alone_make_a_job() {
    let tasks = build_task_graph(&plan_of(Vec::new()), &[copy(1, 2)], &SEQUENTIAL);
    assert_eq!(tasks.len(), 1);
    let tasks = build_task_graph(&plan_of(Vec::new()), &[copy(1, 2)], &PARALLEL_REFERENCE);
    assert_eq!(tasks.len(), 2);
    assert!(build_task_graph(&plan_of(Vec::new()), &[], &BOTH).is_empty());
}

#[test]
fn parallel_reference_copies_each_table_then_creates_the_foreign_keys() {
    let tasks = build_task_graph(
        &plan_of(sample_moves()),
        &sample_copies(),
        &PARALLEL_REFERENCE,
    );
    assert_eq!(tasks.len(), 3 + 1 + 6);
    let copies: Vec<&TaskOp> = tasks[..3].iter().map(|task| &task.op).collect();
    assert_eq!(
        copies,
        vec![
            &TaskOp::CopyReferenceTable(copy(10, 3)),
            &TaskOp::CopyReferenceTable(copy(10, 4)),
            &TaskOp::CopyReferenceTable(copy(20, 4)),
        ]
    );
    assert_eq!(tasks[1].nodes_involved, vec![4]);
    assert_eq!(
        tasks[3].op,
        TaskOp::CreateReferenceForeignKeys { nodes: vec![3, 4] }
    );
    assert_eq!(
        deps(&tasks),
        vec![
            vec![],
            vec![],
            vec![],
            vec![0, 1, 2],
            vec![3],
            vec![4],
            vec![5],
            vec![6],
            vec![7],
            vec![8],
        ]
    );
}

#[test]
fn parallel_colocated_keeps_only_the_needed_order() {
    let tasks = build_task_graph(&plan_of(sample_moves()), &[], &PARALLEL_COLOCATED);
    assert_eq!(
        deps(&tasks),
        vec![
            vec![],     // 1→3
            vec![],     // 2→3
            vec![],     // 3→4
            vec![2],    // 1→3 waits for the move out of 3
            vec![0, 1], // (1,0) again: after its first move; into 2, which move 1 left
            vec![],     // 5→6
        ]
    );
}

#[test]
fn both_flags_combine_both_rule_sets() {
    let tasks = build_task_graph(&plan_of(sample_moves()), &sample_copies(), &BOTH);
    let foreign_keys = 3;
    assert_eq!(
        deps(&tasks)[4..],
        vec![
            vec![foreign_keys],
            vec![foreign_keys],
            vec![foreign_keys],
            vec![foreign_keys, 6],
            vec![foreign_keys, 4, 5],
            vec![foreign_keys],
        ]
    );
}

#[test]
fn tasks_round_trip_through_json() {
    for options in ALL_OPTIONS {
        let tasks = build_task_graph(&plan_of(sample_moves()), &sample_copies(), &options);
        let json = serde_json::to_string(&tasks).unwrap();
        assert_eq!(serde_json::from_str::<Vec<TaskSpec>>(&json).unwrap(), tasks);
    }
}

/// The brief's reference data set: 32 shard groups on two workers, a third added.
#[test]
fn the_reference_data_set_gets_ten_moves_that_can_all_run_at_once() {
    let groups: Vec<ShardGroup> = (0..32)
        .map(|i| group(1, i, 1 + i % 2, 19 * 1024 * 1024))
        .collect();
    for strategy in [Rebalance::ByShardCount, Rebalance::by_disk_size()] {
        let plan = plan(&nodes([1, 2, 3]), &groups, &PlanOptions::new(strategy)).unwrap();
        assert_eq!(plan.moves.len(), 10);
        assert!(plan.moves.iter().all(|mv| mv.to == 3));
        let copies = [copy(7, 3)];
        let tasks = build_task_graph(&plan, &copies, &BOTH);
        // Nothing leaves node 3, so the moves wait only for the reference tables.
        assert!(tasks[2..].iter().all(|task| task.depends_on == vec![1]));
        let tasks = build_task_graph(&plan, &copies, &SEQUENTIAL);
        assert_eq!(tasks.len(), 11);
    }
}

/// Checks the invariants every graph has, and the exact dependencies each rule implies.
fn check_graph(
    plan: &Plan,
    copies: &[ReferenceCopy],
    options: &GraphOptions,
    tasks: &[TaskSpec],
) -> Result<(), TestCaseError> {
    let unique: BTreeSet<ReferenceCopy> = copies.iter().copied().collect();
    let reference_tasks = match (unique.is_empty(), options.parallel_reference) {
        (true, _) => 0,
        (false, false) => 1,
        (false, true) => unique.len() + 1,
    };
    prop_assert_eq!(tasks.len(), reference_tasks + plan.moves.len());
    for (i, task) in tasks.iter().enumerate() {
        prop_assert_eq!(task.key, i);
        // A DAG in topological order: dependencies point backwards, sorted, no duplicates.
        prop_assert!(task.depends_on.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(task.depends_on.iter().all(|&d| d < i));
        prop_assert!(task.nodes_involved.windows(2).all(|w| w[0] < w[1]));
    }
    let barrier = reference_tasks.checked_sub(1);
    for (i, mv) in plan.moves.iter().enumerate() {
        let key = reference_tasks + i;
        let task = &tasks[key];
        prop_assert_eq!(&task.op, &TaskOp::Move(mv.clone()));
        let mut expected: BTreeSet<usize> = BTreeSet::new();
        if options.parallel_colocated {
            expected.extend(barrier);
            for (j, earlier) in plan.moves[..i].iter().enumerate() {
                if earlier.from == mv.to {
                    expected.insert(reference_tasks + j);
                }
            }
            if let Some(j) = plan.moves[..i].iter().rposition(|earlier| {
                (earlier.colocation_id, earlier.shard_index) == (mv.colocation_id, mv.shard_index)
            }) {
                expected.insert(reference_tasks + j);
            }
        } else if i == 0 {
            expected.extend(barrier);
        } else {
            expected.insert(key - 1);
        }
        prop_assert_eq!(&task.depends_on, &expected.into_iter().collect::<Vec<_>>());
    }
    if options.parallel_reference && !unique.is_empty() {
        let foreign_keys = reference_tasks - 1;
        prop_assert_eq!(
            &tasks[foreign_keys].depends_on,
            &(0..foreign_keys).collect::<Vec<_>>()
        );
        for task in &tasks[..foreign_keys] {
            prop_assert!(task.depends_on.is_empty());
        }
    }
    Ok(())
}

fn arb_moves() -> impl Strategy<Value = Vec<Move>> {
    prop::collection::vec((1..4i32, 0..4i32, 1..6i32, 1..6i32), 0..30).prop_map(|raw| {
        raw.into_iter()
            .filter(|(_, _, from, to)| from != to)
            .map(|(c, i, from, to)| mv(c, i, from, to))
            .collect()
    })
}

fn arb_copies() -> impl Strategy<Value = Vec<ReferenceCopy>> {
    prop::collection::vec((1..5i32, 1..6i32), 0..8)
        .prop_map(|raw| raw.into_iter().map(|(t, n)| copy(t, n)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// All four flag combinations: a DAG in topological order with exactly the dependencies the
    /// rules imply, independent of the order of the reference copies.
    #[test]
    fn graphs_follow_the_rules(moves in arb_moves(), copies in arb_copies()) {
        let plan = plan_of(moves);
        for options in ALL_OPTIONS {
            let tasks = build_task_graph(&plan, &copies, &options);
            check_graph(&plan, &copies, &options, &tasks)?;
            let mut reversed = copies.clone();
            reversed.reverse();
            prop_assert_eq!(build_task_graph(&plan, &reversed, &options), tasks);
        }
    }
}
