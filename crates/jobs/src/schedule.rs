//! Which runnable tasks start now, under a global limit and a per-node limit. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many tasks may run at once, in all and per node. A job may override the daemon's
/// limits for its own tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_parallel: usize,
    pub max_parallel_per_node: usize,
}

/// Four tasks at once, two per node: a move reads its source and writes its target, and two
/// moves into one node already keep a small machine's disks and cores busy.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_parallel: 4,
    max_parallel_per_node: 2,
};

impl Default for Limits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

/// A task that may start, with the limits of its job.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub task_id: i64,
    pub nodes: Vec<i32>,
    pub limits: Limits,
}

/// Picks the candidates to start, in the order given (callers pass them by job, then by their
/// position in the job's graph, so earlier tasks go first). `running` holds the nodes of every
/// task running now, in every process.
///
/// A candidate starts when, counting what runs and what was picked before it, fewer than its
/// `max_parallel` tasks run in all and fewer than its `max_parallel_per_node` involve each of
/// its nodes. A candidate that does not fit is skipped, and later ones may still start (a move
/// between two idle nodes need not wait behind one into a busy node).
pub fn select(candidates: &[Candidate], running: &[Vec<i32>]) -> Vec<i64> {
    let mut total = running.len();
    let mut per_node: BTreeMap<i32, usize> = BTreeMap::new();
    for nodes in running {
        for node in nodes {
            *per_node.entry(*node).or_default() += 1;
        }
    }
    let mut picked = Vec::new();
    for candidate in candidates {
        let Limits {
            max_parallel,
            max_parallel_per_node,
        } = candidate.limits;
        if total >= max_parallel {
            continue;
        }
        let fits = candidate
            .nodes
            .iter()
            .all(|node| per_node.get(node).copied().unwrap_or(0) < max_parallel_per_node);
        if !fits {
            continue;
        }
        total += 1;
        for node in &candidate.nodes {
            *per_node.entry(*node).or_default() += 1;
        }
        picked.push(candidate.task_id);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(task_id: i64, nodes: &[i32], limits: Limits) -> Candidate {
        Candidate {
            task_id,
            nodes: nodes.to_vec(),
            limits,
        }
    }

    const LIMITS: Limits = Limits {
        max_parallel: 3,
        max_parallel_per_node: 1,
    };

    #[test]
    fn respects_the_per_node_limit_and_skips_what_does_not_fit() {
        let candidates = [
            candidate(1, &[1, 3], LIMITS),
            candidate(2, &[2, 3], LIMITS),
            candidate(3, &[2, 4], LIMITS),
            candidate(4, &[5, 6], LIMITS),
        ];
        // 2 shares node 3 with 1; 3 and 4 fit.
        assert_eq!(select(&candidates, &[]), vec![1, 3, 4]);
        let two = Limits {
            max_parallel: 2,
            max_parallel_per_node: 1,
        };
        let candidates: Vec<Candidate> = candidates
            .iter()
            .map(|c| candidate(c.task_id, &c.nodes, two))
            .collect();
        // 4 fits its nodes but not the global limit of 2.
        assert_eq!(select(&candidates, &[]), vec![1, 3]);
        let wide = Limits {
            max_parallel: 3,
            max_parallel_per_node: 2,
        };
        let candidates: Vec<Candidate> = candidates
            .iter()
            .map(|c| candidate(c.task_id, &c.nodes, wide))
            .collect();
        assert_eq!(select(&candidates, &[]), vec![1, 2, 3]);
    }

    #[test]
    fn counts_what_already_runs_anywhere() {
        let candidates = [
            candidate(1, &[1, 2], LIMITS),
            candidate(2, &[3, 4], LIMITS),
            candidate(3, &[5, 6], LIMITS),
        ];
        assert_eq!(select(&candidates, &[vec![2, 7]]), vec![2, 3]);
        assert_eq!(
            select(&candidates, &[vec![8], vec![9], vec![10]]),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn a_job_may_raise_or_lower_its_own_limits() {
        let sequential = Limits {
            max_parallel: 1,
            max_parallel_per_node: 1,
        };
        let generous = Limits {
            max_parallel: 8,
            max_parallel_per_node: 8,
        };
        let candidates = [
            candidate(1, &[1, 3], sequential),
            candidate(2, &[2, 3], sequential),
            candidate(3, &[1, 3], generous),
            candidate(4, &[2, 3], generous),
        ];
        // 2 cannot start next to 1 under its own limit of 1; 3 and 4 can under theirs.
        assert_eq!(select(&candidates, &[]), vec![1, 3, 4]);
    }

    #[test]
    fn never_exceeds_the_limits() {
        // Every subset of a few tasks over a few nodes, against every small limit.
        let all: Vec<Vec<i32>> = vec![vec![1, 2], vec![1, 3], vec![2, 3], vec![3], vec![1, 4]];
        for max_parallel in 1..=5 {
            for per_node in 1..=3 {
                let limits = Limits {
                    max_parallel,
                    max_parallel_per_node: per_node,
                };
                for mask in 0u32..(1 << all.len()) {
                    let running: Vec<Vec<i32>> = (0..all.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| all[i].clone())
                        .collect();
                    let candidates: Vec<Candidate> = all
                        .iter()
                        .enumerate()
                        .map(|(i, nodes)| candidate(i as i64, nodes, limits))
                        .collect();
                    let picked = select(&candidates, &running);
                    let mut load: BTreeMap<i32, usize> = BTreeMap::new();
                    let started: Vec<&Vec<i32>> =
                        picked.iter().map(|id| &all[*id as usize]).collect();
                    for nodes in running.iter().chain(started.iter().copied()) {
                        for node in nodes {
                            *load.entry(*node).or_default() += 1;
                        }
                    }
                    if !picked.is_empty() {
                        assert!(running.len() + picked.len() <= max_parallel);
                        for (node, count) in &load {
                            let before = running.iter().filter(|n| n.contains(node)).count();
                            assert!(
                                *count <= per_node.max(before),
                                "node {node} runs {count} tasks under a limit of {per_node}"
                            );
                        }
                    }
                }
            }
        }
    }
}
