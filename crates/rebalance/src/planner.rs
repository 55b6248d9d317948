//! The planner: from nodes, shard groups and a strategy to an ordered list of moves.
//!
//! Phases, each working on the state the previous one left:
//! 1. **Drain**: every group on a node that is inactive or should not have shards, or on a node
//!    where the strategy disallows its colocation group, goes to the best allowed node. Largest
//!    groups first, as in bin packing: the small ones then fill the gaps.
//! 2. **Global balance**: while some node is outside the threshold band, move a group from the
//!    most utilised node to the least utilised one that can take one worth moving; among the
//!    candidate groups, prefer those whose colocation group stays spread.
//! 3. **Spread** (shard-count cost only): each colocation group in turn is evened out over the
//!    nodes that allow it, by moves that keep the global balance: a single move that is also
//!    worth it globally, or a swap with a group of another colocation group that does not lose
//!    spread. Phases 2 and 3 repeat until a round changes nothing.
//!
//! Planning works on placements: a group may be taken several times, or back home. The plan
//! returned has at most one move per group, from where it was to where it ends: the groups that
//! had to leave their node first, then the others in the order of the step that last took them.
//! So the plan never moves a group A→B then B→A, nor twice at all, and taking a group that
//! already moves costs no extra copy: such groups are preferred on ties. The price is
//! transient: a group taken twice leaves its origin later than the planner first counted on.
//!
//! Nodes live in a `BTreeSet` keyed by [`NodeRank`] and each node's groups in per-colocation
//! `BTreeSet`s keyed by cost, so a move costs `O(log n)` lookups plus one pass over the
//! colocation groups present on the source node.
//!
//! Termination: a global or single spread step strictly lowers the sorted vector of node
//! utilisations (see [`worth_moving`]); a swap leaves every load as it was and strictly lowers
//! `Σ count² / capacity` over colocation groups and nodes. Placements are finite, so the
//! planner cannot cycle; a step limit far above anything seen guards against rounding in
//! extreme capacities.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::error::PlanError;
use crate::model::{Move, NodeLoad, NodeState, Plan, PlanOptions, ShardGroup};
use crate::score::{
    max_worth_moving, worth_moving, CountCandidate, DiskCandidate, DrainTargetRank, Fill, NodeRank,
    OrdF64, SpreadRank,
};
use crate::strategy::CostKind;

/// Tolerance when deciding whether a move keeps a colocation group spread: spreads are small
/// ratios of counts and capacities, and rounding must not flip the answer.
const SPREAD_EPSILON: f64 = 1e-9;

/// Node pairs a spread step examines in full (looking for a swap partner costs a pass over the
/// colocation groups on a node) before giving up on the colocation group. Pairs come most
/// promising first, and on equal nodes the first pair always yields a step, so the bound only
/// cuts searches that would almost surely fail: with uneven capacities a colocation group
/// often cannot be spread exactly, and trying every pair of 100 nodes for each of 100
/// colocation groups cost 100 ms.
const SPREAD_PAIRS_PER_STEP: usize = 64;

/// Plans the moves that drain the nodes that must be emptied and then balance the cluster.
///
/// Deterministic: the same nodes and groups, in any order, give the same plan. See the crate
/// documentation for the model and the guarantees.
pub fn plan(
    nodes: &[NodeState],
    groups: &[ShardGroup],
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    let strategy = &options.strategy;
    strategy.validate()?;
    let threshold = options.threshold.unwrap_or(strategy.default_threshold());
    check_threshold("threshold", threshold)?;
    let threshold = threshold.max(strategy.minimum_threshold());
    let improvement_threshold = options
        .improvement_threshold
        .unwrap_or(strategy.improvement_threshold());
    check_threshold("improvement_threshold", improvement_threshold)?;

    let mut state = State::new(nodes, groups, options, improvement_threshold)?;
    let before = state.loads();

    state.drain()?;
    if !options.drain_only {
        loop {
            state.balance(threshold);
            if state.mode == Mode::Disk {
                break;
            }
            let steps = state.steps;
            for colocation in 0..state.colocations.len() {
                state.spread_colocation(colocation, threshold);
            }
            // A single spread move may open a new global move; the global phase is at a fixed
            // point otherwise.
            if state.steps == steps {
                break;
            }
        }
    }

    // Groups that had to leave their node come first, so that a cut plan drains before it
    // balances; then the order of planning.
    let mut planned: Vec<Planned> = state
        .groups
        .iter()
        .filter(|group| group.node != group.origin)
        .map(|group| {
            let drained = !state.colocations[group.colocation].allowed[group.origin];
            let input = group.input;
            Planned {
                order: (!drained, group.last_step),
                cost: group.cost,
                mv: Move {
                    colocation_id: input.colocation_id,
                    shard_index: input.shard_index,
                    anchor_shard_id: input.anchor_shard_id,
                    from: state.nodes[group.origin].node_id,
                    to: state.nodes[group.node].node_id,
                    size_bytes: input.size_bytes,
                },
            }
        })
        .collect();
    planned.sort_by_key(|planned| planned.order);
    // Cut after normalising, so that a cut plan is the start of the full one.
    if let Some(max_moves) = options.max_moves {
        planned.truncate(max_moves);
    }
    let capacities: Vec<f64> = state.nodes.iter().map(|node| node.capacity).collect();
    let after = replay_loads(&before, &capacities, &planned);
    Ok(Plan {
        moves: planned.into_iter().map(|planned| planned.mv).collect(),
        before,
        after,
        threshold,
        improvement_threshold,
    })
}

/// A move of the normalised plan, with what orders it and what it costs.
struct Planned {
    /// (not drained, last step): drain moves first, then planning order.
    order: (bool, usize),
    cost: i64,
    mv: Move,
}

fn check_threshold(name: &'static str, value: f64) -> Result<(), PlanError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(PlanError::InvalidThreshold { name, value })
    }
}

/// The loads after applying the moves to `before`; `before` and `capacities` are sorted by
/// node id.
fn replay_loads(before: &[NodeLoad], capacities: &[f64], moves: &[Planned]) -> Vec<NodeLoad> {
    let mut after = before.to_vec();
    let index = |node_id: i32| {
        before
            .binary_search_by_key(&node_id, |load| load.node_id)
            .expect("moves name known nodes")
    };
    for Planned { mv, cost, .. } in moves {
        let (from, to) = (index(mv.from), index(mv.to));
        after[from].cost -= cost;
        after[from].groups -= 1;
        after[to].cost += cost;
        after[to].groups += 1;
    }
    for (load, capacity) in after.iter_mut().zip(capacities) {
        load.utilisation = load.cost as f64 / capacity;
    }
    after
}

/// Whether every group costs the same (then colocation spread is free to pursue) or groups
/// have sizes (then bytes come first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Count,
    Disk,
}

struct Node {
    node_id: i32,
    capacity: f64,
    eligible: bool,
    load: i64,
    groups: usize,
}

struct Group<'a> {
    input: &'a ShardGroup,
    colocation: usize,
    cost: i64,
    /// Where the group is in the input.
    origin: usize,
    /// Where the plan has taken it so far.
    node: usize,
    /// The step that last took it, which orders its move in the plan.
    last_step: usize,
}

impl Group<'_> {
    /// Whether the plan already moves this group, so that taking it elsewhere adds no copy.
    fn moved(&self) -> bool {
        self.node != self.origin
    }
}

struct Colocation {
    /// Per node index: whether the strategy and the node allow the colocation group there.
    allowed: Vec<bool>,
    groups: usize,
}

/// A group in its node's per-colocation set. The last key is the group to take first: the
/// dearest, then one the plan already moves (taking it again costs no extra copy), then the
/// lowest shard index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    cost: i64,
    moved: bool,
    group: Reverse<usize>,
}

impl GroupKey {
    /// The largest key of the given cost.
    fn last_of_cost(cost: i64) -> Self {
        GroupKey {
            cost,
            moved: true,
            group: Reverse(0),
        }
    }
}

struct State<'a> {
    mode: Mode,
    improvement_threshold: f64,
    nodes: Vec<Node>,
    groups: Vec<Group<'a>>,
    colocations: Vec<Colocation>,
    /// Per node index: colocation index → the node's groups of that colocation group.
    placed: Vec<BTreeMap<usize, BTreeSet<GroupKey>>>,
    /// The nodes that may have shards, by utilisation.
    ranks: BTreeSet<NodeRank>,
    /// Per node index, bumped on every change, so that a failed search between two unchanged
    /// nodes is not repeated.
    versions: Vec<u64>,
    total_cost: i64,
    /// Steps taken so far: orders the moves, and tells whether a round changed anything.
    steps: usize,
    /// Safety net against endless planning; see the module documentation.
    step_limit: usize,
    /// Spread searches that found nothing: (colocation, source, target) with both nodes'
    /// versions. Kept across rounds, as most pairs fail again when nothing changed.
    spread_failed: HashSet<(usize, usize, usize, u64, u64)>,
}

impl<'a> State<'a> {
    fn new(
        nodes: &[NodeState],
        groups: &'a [ShardGroup],
        options: &PlanOptions,
        improvement_threshold: f64,
    ) -> Result<Self, PlanError> {
        let strategy = &options.strategy;
        let cost_kind = strategy.cost_kind();

        let mut sorted_nodes: Vec<&NodeState> = nodes.iter().collect();
        sorted_nodes.sort_by_key(|node| node.node_id);
        let mut state_nodes = Vec::with_capacity(sorted_nodes.len());
        for (i, node) in sorted_nodes.iter().enumerate() {
            if i > 0 && sorted_nodes[i - 1].node_id == node.node_id {
                return Err(PlanError::DuplicateNode {
                    node_id: node.node_id,
                });
            }
            let capacity = strategy.capacity(node.node_id, node.capacity);
            if !capacity.is_finite() || capacity <= 0.0 {
                return Err(PlanError::InvalidCapacity {
                    node_id: node.node_id,
                    capacity,
                });
            }
            state_nodes.push(Node {
                node_id: node.node_id,
                capacity,
                eligible: node.is_eligible(),
                load: 0,
                groups: 0,
            });
        }
        let node_index: BTreeMap<i32, usize> = state_nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.node_id, i))
            .collect();

        let mut sorted_groups: Vec<&'a ShardGroup> = groups.iter().collect();
        sorted_groups.sort_by_key(|group| (group.colocation_id, group.shard_index));
        let mut colocation_ids: Vec<i32> = sorted_groups.iter().map(|g| g.colocation_id).collect();
        colocation_ids.dedup();
        let colocation_index: BTreeMap<i32, usize> = colocation_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        let mut colocations: Vec<Colocation> = colocation_ids
            .iter()
            .map(|&colocation_id| Colocation {
                allowed: state_nodes
                    .iter()
                    .map(|node| node.eligible && strategy.allows(colocation_id, node.node_id))
                    .collect(),
                groups: 0,
            })
            .collect();

        let mut placed: Vec<BTreeMap<usize, BTreeSet<GroupKey>>> =
            (0..state_nodes.len()).map(|_| BTreeMap::new()).collect();
        let mut state_groups = Vec::with_capacity(sorted_groups.len());
        let mut total_cost: i64 = 0;
        for (i, group) in sorted_groups.iter().enumerate() {
            if i > 0 {
                let previous = sorted_groups[i - 1];
                if (previous.colocation_id, previous.shard_index)
                    == (group.colocation_id, group.shard_index)
                {
                    return Err(PlanError::DuplicateGroup {
                        colocation_id: group.colocation_id,
                        shard_index: group.shard_index,
                    });
                }
            }
            let Some(&node) = node_index.get(&group.node_id) else {
                return Err(PlanError::UnknownNode {
                    colocation_id: group.colocation_id,
                    shard_index: group.shard_index,
                    node_id: group.node_id,
                });
            };
            if group.size_bytes < 0 {
                return Err(PlanError::NegativeSize {
                    colocation_id: group.colocation_id,
                    shard_index: group.shard_index,
                    size_bytes: group.size_bytes,
                });
            }
            let cost = cost_kind
                .cost(group.size_bytes)
                .ok_or(PlanError::CostOverflow)?;
            total_cost = total_cost
                .checked_add(cost)
                .ok_or(PlanError::CostOverflow)?;
            let colocation = colocation_index[&group.colocation_id];
            colocations[colocation].groups += 1;
            state_nodes[node].load += cost;
            state_nodes[node].groups += 1;
            placed[node]
                .entry(colocation)
                .or_default()
                .insert(GroupKey {
                    cost,
                    moved: false,
                    group: Reverse(i),
                });
            state_groups.push(Group {
                input: group,
                colocation,
                cost,
                origin: node,
                node,
                last_step: 0,
            });
        }

        let mut state = State {
            mode: match cost_kind {
                CostKind::ShardCount => Mode::Count,
                CostKind::DiskSize { .. } => Mode::Disk,
            },
            improvement_threshold,
            versions: vec![0; state_nodes.len()],
            nodes: state_nodes,
            groups: state_groups,
            colocations,
            placed,
            ranks: BTreeSet::new(),
            total_cost,
            steps: 0,
            spread_failed: HashSet::new(),
            step_limit: 64usize
                .saturating_mul(sorted_groups.len() + 1)
                .saturating_mul(sorted_nodes.len() + 1),
        };
        state.ranks = (0..state.nodes.len())
            .filter(|&i| state.nodes[i].eligible)
            .map(|i| state.rank(i))
            .collect();
        Ok(state)
    }

    fn loads(&self) -> Vec<NodeLoad> {
        self.nodes
            .iter()
            .map(|node| NodeLoad {
                node_id: node.node_id,
                cost: node.load,
                utilisation: node.load as f64 / node.capacity,
                groups: node.groups,
            })
            .collect()
    }

    fn fill(&self, node: usize) -> Fill {
        Fill {
            load: self.nodes[node].load as f64,
            capacity: self.nodes[node].capacity,
        }
    }

    fn utilisation(&self, node: usize) -> f64 {
        self.nodes[node].load as f64 / self.nodes[node].capacity
    }

    fn rank(&self, node: usize) -> NodeRank {
        NodeRank {
            utilisation: OrdF64(self.utilisation(node)),
            capacity: Reverse(OrdF64(self.nodes[node].capacity)),
            node,
        }
    }

    fn count(&self, node: usize, colocation: usize) -> usize {
        self.placed[node].get(&colocation).map_or(0, BTreeSet::len)
    }

    /// Shard groups of the colocation group per unit of capacity on the node.
    fn spread(&self, node: usize, colocation: usize) -> f64 {
        self.count(node, colocation) as f64 / self.nodes[node].capacity
    }

    fn spread_rank(&self, node: usize, colocation: usize) -> SpreadRank {
        SpreadRank {
            spread: OrdF64(self.spread(node, colocation)),
            utilisation: OrdF64(self.utilisation(node)),
            capacity: Reverse(OrdF64(self.nodes[node].capacity)),
            node,
        }
    }

    /// How much the colocation group's spread evens out if one of its groups goes from `source`
    /// to `target`: positive when the target, after the move, still holds fewer per unit of
    /// capacity than the source did before.
    fn spread_gain(&self, source: usize, target: usize, colocation: usize) -> f64 {
        self.spread(source, colocation)
            - (self.count(target, colocation) + 1) as f64 / self.nodes[target].capacity
    }

    fn key(&self, group: usize) -> GroupKey {
        GroupKey {
            cost: self.groups[group].cost,
            moved: self.groups[group].moved(),
            group: Reverse(group),
        }
    }

    /// Whether planning may go on.
    fn steps_left(&self) -> bool {
        debug_assert!(
            self.steps < self.step_limit,
            "the planner hit its step limit"
        );
        self.steps < self.step_limit
    }

    /// Takes the group to `target` and updates every index.
    fn apply(&mut self, group: usize, target: usize) {
        let source = self.groups[group].node;
        let colocation = self.groups[group].colocation;
        let cost = self.groups[group].cost;
        debug_assert!(source != target);
        debug_assert!(self.colocations[colocation].allowed[target]);

        for node in [source, target] {
            if self.nodes[node].eligible {
                let rank = self.rank(node);
                self.ranks.remove(&rank);
            }
        }
        let old_key = self.key(group);
        if let Some(set) = self.placed[source].get_mut(&colocation) {
            set.remove(&old_key);
            if set.is_empty() {
                self.placed[source].remove(&colocation);
            }
        }
        self.nodes[source].load -= cost;
        self.nodes[source].groups -= 1;
        self.nodes[target].load += cost;
        self.nodes[target].groups += 1;
        self.groups[group].node = target;
        self.groups[group].last_step = self.steps;
        self.steps += 1;

        let new_key = self.key(group);
        self.placed[target]
            .entry(colocation)
            .or_default()
            .insert(new_key);
        for node in [source, target] {
            if self.nodes[node].eligible {
                let rank = self.rank(node);
                self.ranks.insert(rank);
            }
            self.versions[node] += 1;
        }
    }

    /// Phase 1: move every group off nodes it may not stay on.
    fn drain(&mut self) -> Result<(), PlanError> {
        let mut misplaced: Vec<usize> = (0..self.groups.len())
            .filter(|&g| {
                let group = &self.groups[g];
                !self.colocations[group.colocation].allowed[group.node]
            })
            .collect();
        // Refuse up front rather than after some moves.
        for &g in &misplaced {
            let group = &self.groups[g];
            if !self.colocations[group.colocation].allowed.contains(&true) {
                return Err(PlanError::NoAllowedNode {
                    colocation_id: group.input.colocation_id,
                    shard_index: group.input.shard_index,
                    node_id: group.input.node_id,
                });
            }
        }
        misplaced.sort_by_key(|&g| (Reverse(self.groups[g].cost), g));
        for g in misplaced {
            let target = (0..self.nodes.len())
                .filter(|&t| self.colocations[self.groups[g].colocation].allowed[t])
                .min_by_key(|&t| self.drain_target_rank(g, t))
                .expect("checked above that an allowed node exists");
            self.apply(g, target);
        }
        Ok(())
    }

    fn drain_target_rank(&self, group: usize, target: usize) -> DrainTargetRank {
        let g = &self.groups[group];
        let node = &self.nodes[target];
        let utilisation = OrdF64((node.load + g.cost) as f64 / node.capacity);
        let spread = OrdF64((self.count(target, g.colocation) + 1) as f64 / node.capacity);
        let (primary, secondary) = match self.mode {
            Mode::Count => (spread, utilisation),
            Mode::Disk => (utilisation, spread),
        };
        DrainTargetRank {
            primary,
            secondary,
            capacity: Reverse(OrdF64(node.capacity)),
            node: target,
        }
    }

    /// Phase 2: even out utilisation over all nodes that may have shards.
    fn balance(&mut self, threshold: f64) {
        let capacity: f64 = self
            .nodes
            .iter()
            .filter(|node| node.eligible)
            .map(|node| node.capacity)
            .sum();
        if capacity <= 0.0 {
            return;
        }
        let average = self.total_cost as f64 / capacity;
        let (lower, upper) = (average * (1.0 - threshold), average * (1.0 + threshold));
        let mut failed: HashSet<(usize, usize, u64, u64)> = HashSet::new();

        while self.steps_left() {
            let (Some(lowest), Some(highest)) = (self.ranks.first(), self.ranks.last()) else {
                return;
            };
            if highest.utilisation.0 <= upper && lowest.utilisation.0 >= lower {
                return;
            }
            let mut found = None;
            'search: for source in self.ranks.iter().rev() {
                if source.utilisation.0 <= lower {
                    break;
                }
                for target in self.ranks.iter() {
                    if target.utilisation.0 >= upper
                        || (target.utilisation.0 >= lower && source.utilisation.0 <= upper)
                        || target.utilisation >= source.utilisation
                    {
                        break;
                    }
                    let attempt = (
                        source.node,
                        target.node,
                        self.versions[source.node],
                        self.versions[target.node],
                    );
                    if failed.contains(&attempt) {
                        continue;
                    }
                    match self.pick(source.node, target.node) {
                        Some(group) => {
                            found = Some((group, target.node));
                            break 'search;
                        }
                        None => {
                            failed.insert(attempt);
                        }
                    }
                }
            }
            let Some((group, target)) = found else {
                return;
            };
            self.apply(group, target);
        }
    }

    /// The best group to move from `source` to `target` in the global phase, if any is worth it.
    fn pick(&self, source: usize, target: usize) -> Option<usize> {
        let source_fill = self.fill(source);
        let target_fill = self.fill(target);
        let theta = self.improvement_threshold;
        match self.mode {
            Mode::Count => {
                if !worth_moving(source_fill, target_fill, 1.0, theta) {
                    return None;
                }
                self.best_count_candidate(source, target, None, false)
            }
            Mode::Disk => {
                let bound = max_worth_moving(source_fill, target_fill, theta)?;
                let mut best: Option<DiskCandidate> = None;
                for (&colocation, set) in &self.placed[source] {
                    if !self.colocations[colocation].allowed[target] {
                        continue;
                    }
                    let Some(key) = self.dearest_worth_moving(set, source_fill, target_fill, bound)
                    else {
                        continue;
                    };
                    let spread_gain = self.spread_gain(source, target, colocation);
                    let candidate = DiskCandidate {
                        keeps_spread: spread_gain >= -SPREAD_EPSILON,
                        cost: key.cost,
                        moved: key.moved,
                        spread_gain: OrdF64(spread_gain),
                        group: key.group,
                    };
                    best = best.max(Some(candidate));
                }
                best.map(|candidate| candidate.group.0)
            }
        }
    }

    /// By shard count, the group to move from `source` to `target`: the one whose colocation
    /// group's spread gains most. `except` leaves one colocation group out; `keep_spread` refuses
    /// groups whose colocation group's spread would get worse.
    fn best_count_candidate(
        &self,
        source: usize,
        target: usize,
        except: Option<usize>,
        keep_spread: bool,
    ) -> Option<usize> {
        let mut best: Option<CountCandidate> = None;
        for (&colocation, set) in &self.placed[source] {
            if Some(colocation) == except || !self.colocations[colocation].allowed[target] {
                continue;
            }
            let spread_gain = self.spread_gain(source, target, colocation);
            if keep_spread && spread_gain < -SPREAD_EPSILON {
                continue;
            }
            let Some(key) = set.last() else {
                continue;
            };
            let candidate = CountCandidate {
                spread_gain: OrdF64(spread_gain),
                moved: key.moved,
                colocation: Reverse(colocation),
                group: key.group,
            };
            best = best.max(Some(candidate));
        }
        best.map(|candidate| candidate.group.0)
    }

    /// The dearest group of `set` worth moving from `source` to `target_fill`.
    fn dearest_worth_moving(
        &self,
        set: &BTreeSet<GroupKey>,
        source: Fill,
        target_fill: Fill,
        bound: i64,
    ) -> Option<GroupKey> {
        let mut ceiling = GroupKey::last_of_cost(bound);
        loop {
            let key = *set.range(..=ceiling).next_back()?;
            if !worth_moving(
                source,
                target_fill,
                key.cost as f64,
                self.improvement_threshold,
            ) {
                // Acceptance is monotone in the cost: skip every group of this cost at once.
                ceiling = GroupKey::last_of_cost(key.cost.checked_sub(1)?);
                continue;
            }
            return Some(key);
        }
    }

    /// One spread step for the colocation group from `source` to `target`, if there is one:
    /// the group to move, and the partner to swap back when the move alone is not worth it
    /// globally.
    fn spread_step(
        &self,
        colocation: usize,
        source: usize,
        target: usize,
    ) -> Option<(usize, usize, usize, Option<usize>)> {
        let group = self.placed[source].get(&colocation)?.last()?.group.0;
        if worth_moving(
            self.fill(source),
            self.fill(target),
            1.0,
            self.improvement_threshold,
        ) {
            return Some((group, source, target, None));
        }
        let partner = self.best_count_candidate(target, source, Some(colocation), true)?;
        Some((group, source, target, Some(partner)))
    }

    /// Phase 3 (shard-count cost only): evens out one colocation group's shard groups over the
    /// nodes allowing it, without undoing the global balance. A step is either a single move
    /// that is worth it globally too, or a swap with a group of another colocation group whose
    /// own spread does not get worse (all groups cost the same, so a swap leaves every node's
    /// load as it was). When neither exists the colocation group stays as it is: global
    /// balance wins.
    fn spread_colocation(&mut self, colocation: usize, threshold: f64) {
        let allowed: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.colocations[colocation].allowed[n])
            .collect();
        if allowed.len() < 2 {
            return;
        }
        let capacity: f64 = allowed.iter().map(|&n| self.nodes[n].capacity).sum();
        let average = self.colocations[colocation].groups as f64 / capacity;
        let (lower, upper) = (average * (1.0 - threshold), average * (1.0 + threshold));
        let mut ranks: BTreeSet<SpreadRank> = allowed
            .iter()
            .map(|&n| self.spread_rank(n, colocation))
            .collect();

        let mut failed = Vec::new();
        while self.steps_left() {
            let mut examined = 0;
            let (Some(lowest), Some(highest)) = (ranks.first(), ranks.last()) else {
                return;
            };
            if highest.spread.0 <= upper && lowest.spread.0 >= lower {
                return;
            }
            let mut found = None;
            'search: for source in ranks.iter().rev() {
                if source.spread.0 <= lower {
                    break;
                }
                for target in ranks.iter() {
                    if target.spread.0 >= upper
                        || (target.spread.0 >= lower && source.spread.0 <= upper)
                        || target.spread >= source.spread
                    {
                        break;
                    }
                    let (s, t) = (source.node, target.node);
                    let attempt = (colocation, s, t, self.versions[s], self.versions[t]);
                    if self.spread_failed.contains(&attempt) {
                        continue;
                    }
                    let source_fill = Fill {
                        load: self.count(s, colocation) as f64,
                        capacity: self.nodes[s].capacity,
                    };
                    let target_fill = Fill {
                        load: self.count(t, colocation) as f64,
                        capacity: self.nodes[t].capacity,
                    };
                    if !worth_moving(source_fill, target_fill, 1.0, self.improvement_threshold) {
                        continue;
                    }
                    if examined == SPREAD_PAIRS_PER_STEP {
                        break 'search;
                    }
                    examined += 1;
                    if let Some(step) = self.spread_step(colocation, s, t) {
                        found = Some(step);
                        break 'search;
                    }
                    failed.push(attempt);
                }
            }
            self.spread_failed.extend(failed.drain(..));
            let Some((group, source, target, partner)) = found else {
                return;
            };
            ranks.remove(&self.spread_rank(source, colocation));
            ranks.remove(&self.spread_rank(target, colocation));
            self.apply(group, target);
            if let Some(partner) = partner {
                self.apply(partner, source);
            }
            ranks.insert(self.spread_rank(source, colocation));
            ranks.insert(self.spread_rank(target, colocation));
        }
    }
}
