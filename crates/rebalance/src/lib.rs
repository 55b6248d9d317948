//! The rebalancer's pure core: [`plan`] decides which shard groups move where, and
//! [`build_task_graph`] turns a plan into the tasks of a background job. No I/O, no database:
//! the caller reads the catalog, calls these functions and stores what they return.
//!
//! # Model
//!
//! - A **node** ([`NodeState`]) is a worker. It *may have shards* when it is active and should
//!   have shards; its **capacity** is relative (a node of capacity 2 is meant to carry twice as
//!   much as a node of capacity 1).
//! - A **shard group** ([`ShardGroup`]) is every shard of one shard index in one colocation
//!   group. Its shards live on one node and always move together, so the group is the unit the
//!   planner moves. A distributed schema is a colocation group with one shard group.
//! - A **strategy** ([`Strategy`]) gives each group a **cost** and may change node capacities
//!   and forbid colocation groups on some nodes. A node's **utilisation** is the sum of its
//!   groups' costs divided by its capacity; the planner evens out utilisation.
//!
//! # Strategies
//!
//! | strategy | cost of a group | threshold (min) | improvement threshold |
//! | --- | --- | --- | --- |
//! | `by_shard_count` | 1 | 0 (0) | 0 |
//! | `by_disk_size` | size + 100 MiB | 0.1 (0.01) | 0.5 |
//! | custom | [`CostKind`] | as stored | as stored |
//!
//! With `avg` the total cost over the total capacity of the nodes that may have shards, a node
//! is balanced when its utilisation is within `avg·(1 ± threshold)`; the planner moves groups
//! only while some node is outside that band, and only from a node above its bottom to a less
//! utilised node below its top. A move that would leave the
//! target fuller than the source (an overshoot) is made only if it lowers the pair's larger
//! utilisation by at least `improvement threshold ×` the utilisation the group adds: with
//! `by_disk_size`, a 1 TB group is not moved to gain 10 GB. A threshold below the strategy's
//! minimum is raised to it, as Citus does. These are Citus's `pg_dist_rebalance_strategy`
//! semantics, with data (a [`CostKind`], capacity overrides, a set of disallowed
//! `(colocation, node)` pairs) where Citus has SQL functions.
//!
//! # What the planner does
//!
//! 1. **Drain.** Groups on a node that may not have shards, or on a node their colocation group
//!    is disallowed on, move to the best allowed node, largest first (by shard count: the node
//!    holding the fewest of the group's colocation group; by disk size: the emptiest node). With
//!    `drain_only`, the plan stops here.
//! 2. **Global balance.** While a node is outside the band, a group moves from the most utilised
//!    node to the least utilised node that can take a group worth moving. Among candidates, by
//!    shard count the group whose colocation group gains most spread goes; by disk size the
//!    largest group worth moving, preferring those whose colocation group stays spread (the
//!    source holds at least as many of it as the target will).
//! 3. **Spread** (shard-count cost only). Each colocation group in turn is evened out over the
//!    nodes that allow it, in groups per unit of capacity, with the same threshold rules, as
//!    Citus balances each colocation group. A spread step never undoes the global balance: it
//!    is a single move that is worth it globally too, or a swap with a group of another
//!    colocation group whose spread does not get worse. Phases 2 and 3 repeat until a round
//!    changes nothing.
//!
//! So by shard count both hold at once where possible: global balance first, and each
//! colocation group spread as far as global balance allows (on equal nodes with nothing
//! disallowed, always within one group). By disk size, bytes come first and spread is a
//! preference among moves that are worth the same.
//!
//! Planning works on placements; the plan returned has **at most one move per group**, from
//! where it is to where it ends: drain moves first, then the others in the order of the
//! planning step that last took each group. So no plan moves a group A→B then B→A (nor
//! A→B→C), and re-taking a group that already moves costs no extra copy, which is why such
//! groups are preferred on ties. `max_moves` keeps the first moves of that plan.
//!
//! Nodes are kept in ordered sets keyed by the score types of the `score` module, and each
//! node's groups per colocation group by cost, so a step costs a few `O(log n)` lookups and a
//! pass over the colocation groups on the source node: planning 10,000 groups on 100 nodes
//! takes milliseconds (`cargo bench -p shoal-rebalance --bench planner`).
//!
//! # Guarantees (checked by the property tests in `tests/properties.rs`)
//!
//! For every valid input:
//! - the same nodes and groups in any order give the same plan;
//! - every move starts where its group is, ends on a node that may have shards and allows the
//!   group, and no group moves more than once;
//! - `before` is the input's load and `after` is exactly what applying the moves gives;
//! - without `max_moves`, no group is left on a node that may not have it; with `drain_only`,
//!   exactly those groups move;
//! - without `max_moves`, the result is **locally optimal**: either every node is within the
//!   band, or no group on a node above the band's bottom is worth moving (in the sense above)
//!   to a less utilised node below the band's top that allows it;
//! - planning again from the result moves nothing;
//! - by shard count, on nodes of equal capacity with nothing disallowed and threshold 0: the
//!   nodes that may have shards hold within one group of each other, and within one group of
//!   each other for every colocation group;
//! - a plan with `max_moves = n` is the first `n` moves of the full plan, and drain moves come
//!   before all others.
//!
//! A group that must leave its node when no node allows it is an error
//! ([`PlanError::NoAllowedNode`]), as are malformed inputs; the planner never returns a partial
//! plan for them.
//!
//! # Task graph
//!
//! [`build_task_graph`] makes the job: the missing reference tables first (one task copying
//! them all, or with `parallel_reference` one task per copy and then one creating the foreign
//! keys), then one task per move. Without `parallel_colocated` the moves run one after another;
//! with it a move waits only for the moves out of its target planned before it (the space it
//! was planned on) and for the previous move of the same shard group. The result is a DAG whose
//! dependencies always point to earlier tasks (`tests/graph.rs` checks every flag combination).

mod error;
mod graph;
mod model;
mod planner;
mod score;
mod strategy;

pub use error::PlanError;
pub use graph::{build_task_graph, GraphOptions, ReferenceCopy, TaskOp, TaskSpec};
pub use model::{Move, NodeLoad, NodeState, Plan, PlanOptions, ShardGroup};
pub use planner::plan;
pub use strategy::{
    CostKind, CustomStrategy, Strategy, DEFAULT_DISK_BASE_COST_BYTES, DISK_SIZE_DEFAULT_THRESHOLD,
    DISK_SIZE_IMPROVEMENT_THRESHOLD, DISK_SIZE_MINIMUM_THRESHOLD, SHARD_COUNT_DEFAULT_THRESHOLD,
    SHARD_COUNT_IMPROVEMENT_THRESHOLD,
};
