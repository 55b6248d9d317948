//! Planner benchmark: 10,000 shard groups (100 colocation groups × 100 shard indexes) on 99
//! loaded nodes plus one empty node, planned with each built-in strategy. The goal is well under
//! a second; Citus needs about 11 s for 8,000.
//!
//! Run with `cargo bench -p shoal-rebalance --bench planner`.

use std::time::{Duration, Instant};

use shoal_rebalance::{plan, NodeState, Plan, PlanOptions, ShardGroup, Strategy};

const COLOCATIONS: i32 = 100;
const SHARDS_PER_COLOCATION: i32 = 100;
const NODES: i32 = 100;
const RUNS: usize = 5;
const MIB: i64 = 1024 * 1024;

/// A fixed scrambling of the group's coordinates, so sizes vary without a random generator and
/// every run plans the same cluster.
fn scramble(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn cluster() -> (Vec<NodeState>, Vec<ShardGroup>) {
    let nodes = (1..=NODES).map(NodeState::new).collect();
    let mut groups = Vec::new();
    for colocation in 0..COLOCATIONS {
        for index in 0..SHARDS_PER_COLOCATION {
            let ordinal = colocation * SHARDS_PER_COLOCATION + index;
            let h = scramble(ordinal as u64);
            // 1 MiB to 1 GiB, and some colocation groups five times bigger than others.
            let size = (1 + (h % 1024) as i64) * MIB * (1 + (colocation % 5) as i64);
            groups.push(ShardGroup {
                colocation_id: colocation + 1,
                shard_index: index,
                anchor_shard_id: 100_000 + ordinal as i64,
                // Nodes 1..=99 hold everything; node 100 was just added.
                node_id: 1 + ordinal % (NODES - 1),
                size_bytes: size,
            });
        }
    }
    (nodes, groups)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Plans `RUNS` times and prints the median; `goal` marks the scenarios the goal is about.
fn run(label: &str, nodes: &[NodeState], groups: &[ShardGroup], strategy: Strategy, goal: bool) {
    let options = PlanOptions::new(strategy);
    let mut times = Vec::with_capacity(RUNS);
    let mut last: Option<Plan> = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let result = plan(nodes, groups, &options).expect("the benchmark cluster is valid");
        times.push(start.elapsed());
        if let Some(previous) = &last {
            assert_eq!(previous, &result, "the planner must be deterministic");
        }
        last = Some(result);
    }
    let result = last.expect("at least one run");
    let new_node = result.after.last().expect("nodes");
    let note = if goal {
        " (goal < 1000 ms; Citus ~11 s for 8,000)"
    } else {
        ""
    };
    println!(
        "planner {label}: groups={} nodes={} moves={} median={:.1} ms{note}",
        groups.len(),
        nodes.len(),
        result.moves.len(),
        median(times).as_secs_f64() * 1000.0,
    );
    let (lowest, highest) = result
        .after
        .iter()
        .map(|load| load.utilisation)
        .fold((f64::MAX, f64::MIN), |(lo, hi), u| (lo.min(u), hi.max(u)));
    let capacity: f64 = nodes.iter().map(|node| node.capacity).sum();
    let average = result
        .after
        .iter()
        .map(|load| load.cost as f64)
        .sum::<f64>()
        / capacity;
    println!(
        "  after: node {} holds {} groups; utilisation min/max = {:.3}/{:.3} of the average",
        new_node.node_id,
        new_node.groups,
        lowest / average,
        highest / average,
    );
}

fn main() {
    let (nodes, groups) = cluster();
    run(
        "by_shard_count",
        &nodes,
        &groups,
        Strategy::ByShardCount,
        true,
    );
    run(
        "by_disk_size",
        &nodes,
        &groups,
        Strategy::by_disk_size(),
        true,
    );

    // Not part of the goal: heavier cases, to show how the planner scales with the number of
    // moves. Half the nodes new:
    let half: Vec<ShardGroup> = groups
        .iter()
        .map(|group| ShardGroup {
            node_id: 1 + (group.node_id - 1) % (NODES / 2),
            ..group.clone()
        })
        .collect();
    let count = Strategy::ByShardCount;
    let disk = Strategy::by_disk_size();
    run(
        "by_shard_count, half the nodes new",
        &nodes,
        &half,
        count.clone(),
        false,
    );
    run(
        "by_disk_size, half the nodes new",
        &nodes,
        &half,
        disk.clone(),
        false,
    );
    // Everything on one node, in one colocation group of 10,000:
    let piled: Vec<ShardGroup> = groups
        .iter()
        .map(|group| ShardGroup {
            colocation_id: 1,
            shard_index: (group.colocation_id - 1) * SHARDS_PER_COLOCATION + group.shard_index,
            node_id: 1,
            ..group.clone()
        })
        .collect();
    run(
        "by_shard_count, all on one node",
        &nodes,
        &piled,
        count.clone(),
        false,
    );
    run(
        "by_disk_size, all on one node",
        &nodes,
        &piled,
        disk.clone(),
        false,
    );
    // Capacities 1 to 3, so that no colocation group can be spread exactly:
    let mixed: Vec<NodeState> = nodes
        .iter()
        .map(|node| NodeState {
            capacity: 1.0 + (scramble(node.node_id as u64) % 3) as f64,
            ..node.clone()
        })
        .collect();
    run(
        "by_shard_count, capacities 1-3",
        &mixed,
        &groups,
        count,
        false,
    );
    run("by_disk_size, capacities 1-3", &mixed, &groups, disk, false);
}
