//! The task graph: from a plan to the tasks of a background job and their dependencies.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Move, Plan};

/// A reference table that a node lacks and must get before shard groups land there (shard
/// tables may have foreign keys to reference tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReferenceCopy {
    pub table_id: i32,
    pub node_id: i32,
}

/// Which parallelism the job may use. Both off is the sequential, backward compatible job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphOptions {
    /// Moves of different shard groups may run at the same time.
    pub parallel_colocated: bool,
    /// Each reference table copy is its own task, and the foreign keys to reference tables are
    /// created by a task of their own once all copies are done.
    pub parallel_reference: bool,
}

/// What one task does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum TaskOp {
    /// Copy all these reference tables, one after another, foreign keys included.
    CopyReferenceTables { copies: Vec<ReferenceCopy> },
    /// Copy one reference table, without the foreign keys that point to other reference tables
    /// (the copy it points to may not be there yet).
    CopyReferenceTable(ReferenceCopy),
    /// Create the foreign keys between reference tables on these nodes.
    CreateReferenceForeignKeys { nodes: Vec<i32> },
    /// Move one shard group.
    Move(Move),
}

/// One task of the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Position in the returned list.
    pub key: usize,
    pub op: TaskOp,
    /// Keys of the tasks that must be done first; sorted, without duplicates, all below `key`.
    pub depends_on: Vec<usize>,
    /// Nodes the task works on, sorted, for per-node concurrency limits.
    pub nodes_involved: Vec<i32>,
}

/// Builds the tasks that carry out `plan`, copying the missing reference tables first.
///
/// Rules:
/// - The reference tables come first. Without `parallel_reference`, one task copies them all;
///   with it, one task per copy (independent of each other) and then one task creating the
///   foreign keys, depending on every copy. Every move waits for that last reference task,
///   directly or through the move before it.
/// - Without `parallel_colocated`, moves run one after another in plan order.
/// - With `parallel_colocated`, a move depends only on:
///   - every earlier move out of its target node, because the plan counted on that space being
///     free (this is also Citus's rule for a node used first as a source and later as a target);
///   - the previous move of the same shard group, so that two moves of one group never overlap.
///
/// The result is a DAG in topological order (every dependency points to an earlier task) and
/// depends only on its inputs; the order of `reference_copies` does not matter.
pub fn build_task_graph(
    plan: &Plan,
    reference_copies: &[ReferenceCopy],
    options: &GraphOptions,
) -> Vec<TaskSpec> {
    let copies: Vec<ReferenceCopy> = reference_copies
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let copy_nodes: Vec<i32> = copies
        .iter()
        .map(|copy| copy.node_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut tasks: Vec<TaskSpec> = Vec::new();
    let push = |tasks: &mut Vec<TaskSpec>, op, depends_on: Vec<usize>, nodes_involved| {
        let key = tasks.len();
        tasks.push(TaskSpec {
            key,
            op,
            depends_on,
            nodes_involved,
        });
        key
    };

    // The task every move must wait for, if any.
    let reference_barrier = if copies.is_empty() {
        None
    } else if options.parallel_reference {
        let copy_keys: Vec<usize> = copies
            .iter()
            .map(|copy| {
                push(
                    &mut tasks,
                    TaskOp::CopyReferenceTable(*copy),
                    Vec::new(),
                    vec![copy.node_id],
                )
            })
            .collect();
        Some(push(
            &mut tasks,
            TaskOp::CreateReferenceForeignKeys {
                nodes: copy_nodes.clone(),
            },
            copy_keys,
            copy_nodes,
        ))
    } else {
        Some(push(
            &mut tasks,
            TaskOp::CopyReferenceTables { copies },
            Vec::new(),
            copy_nodes,
        ))
    };

    let mut previous_move: Option<usize> = None;
    let mut moves_out_of: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    let mut last_move_of_group: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for mv in &plan.moves {
        let group = (mv.colocation_id, mv.shard_index);
        let mut depends_on: Vec<usize> = Vec::new();
        if options.parallel_colocated {
            depends_on.extend(reference_barrier);
            if let Some(keys) = moves_out_of.get(&mv.to) {
                depends_on.extend(keys);
            }
            depends_on.extend(last_move_of_group.get(&group));
            depends_on.sort_unstable();
            depends_on.dedup();
        } else {
            depends_on.extend(previous_move.or(reference_barrier));
        }
        let mut nodes_involved = vec![mv.from, mv.to];
        nodes_involved.sort_unstable();
        nodes_involved.dedup();
        let key = push(
            &mut tasks,
            TaskOp::Move(mv.clone()),
            depends_on,
            nodes_involved,
        );
        moves_out_of.entry(mv.from).or_default().push(key);
        last_move_of_group.insert(group, key);
        previous_move = Some(key);
    }
    tasks
}
