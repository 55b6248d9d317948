//! Ordered score types. The planner keeps nodes and candidate groups in ordered sets keyed by
//! these, so that "most utilised node" or "best group to move" is a lookup, not a scan, and so
//! that every tie is broken the same way on every run.

use std::cmp::{Ordering, Reverse};

/// An `f64` with a total order, for use in keys. Planner inputs are validated finite, so the
/// order agrees with `<` on every value the planner produces.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OrdF64(pub f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Cost per unit of capacity: the quantity the planner evens out. Comparing utilisations rather
/// than costs is what lets nodes of different capacities be balanced against each other.
pub(crate) type Utilisation = OrdF64;

/// Where a node stands in the global balance, ascending from the emptiest node.
///
/// Ties in utilisation go to the larger node first: its utilisation grows more slowly per group
/// received, so it is the better target. The node index (nodes are sorted by id) makes the order
/// total, hence the plan deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NodeRank {
    pub utilisation: Utilisation,
    pub capacity: Reverse<OrdF64>,
    pub node: usize,
}

/// Where a node stands in one colocation group's spread, ascending from the node holding the
/// fewest of the group's shard groups per unit of capacity.
///
/// Ties in spread are broken by global utilisation, so that evening out a colocation group
/// takes from the fullest nodes and gives to the emptiest ones, where a single move is most
/// likely to be worth it globally too (no swap needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SpreadRank {
    pub spread: OrdF64,
    pub utilisation: Utilisation,
    pub capacity: Reverse<OrdF64>,
    pub node: usize,
}

/// The score of a target for a group that must leave its node; the lowest wins.
///
/// `primary` and `secondary` are the target's utilisation and the group's colocation spread on
/// the target, each as it would be after the move. By shard count, spread comes first (every
/// group costs the same, so spreading each colocation group is free); by disk size, utilisation
/// comes first (placing the largest groups on the emptiest nodes is what keeps bytes even).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DrainTargetRank {
    pub primary: OrdF64,
    pub secondary: OrdF64,
    pub capacity: Reverse<OrdF64>,
    pub node: usize,
}

/// The score of a group to move by shard count; the highest wins.
///
/// All groups cost the same, so the only choice is the colocation group: the one whose spread
/// gains most (the source holds the most of it relative to the target). Then a group the plan
/// already moves: taking it elsewhere changes its destination but adds no copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CountCandidate {
    pub spread_gain: OrdF64,
    pub moved: bool,
    pub colocation: Reverse<usize>,
    pub group: Reverse<usize>,
}

/// The score of a group to move by disk size; the highest wins.
///
/// First, a move that keeps its colocation group spread (the source holds at least as many of
/// the group's shard groups, per unit of capacity, as the target will); then the largest group
/// that is worth moving, which reaches balance in the fewest moves, as Citus does; then one the
/// plan already moves, which adds no copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DiskCandidate {
    pub keeps_spread: bool,
    pub cost: i64,
    pub moved: bool,
    pub spread_gain: OrdF64,
    pub group: Reverse<usize>,
}

/// A node's load, in cost units, and capacity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fill {
    pub load: f64,
    pub capacity: f64,
}

impl Fill {
    pub fn utilisation(&self) -> f64 {
        self.load / self.capacity
    }
}

/// Whether moving a group of cost `cost` from `source` to `target` improves the balance enough.
///
/// - If the target ends no fuller than the source, the larger of the two utilisations went down:
///   always worth it.
/// - If the target would end at or above the source's utilisation before the move, nothing
///   improved: never.
/// - Otherwise the move overshoots. It is made only if `improvement / added ≥ θ`, where
///   `improvement` is how much the pair's larger utilisation went down and `added` is the
///   utilisation the group adds (the smaller of what it adds to the target and removes from the
///   source, for nodes of different capacities).
///
/// Every accepted move lowers the larger utilisation of the pair strictly, so the sorted vector
/// of utilisations goes down lexicographically with each move: the planner cannot cycle.
pub(crate) fn worth_moving(
    source: Fill,
    target: Fill,
    cost: f64,
    improvement_threshold: f64,
) -> bool {
    if cost <= 0.0 {
        return false;
    }
    let source_before = source.utilisation();
    let target_before = target.utilisation();
    let source_after = (source.load - cost) / source.capacity;
    let target_after = (target.load + cost) / target.capacity;
    if target_after <= source_after {
        return true;
    }
    if target_after >= source_before {
        return false;
    }
    let improvement = (source_before - target_after).max(source_after - target_before);
    let added = (target_after - target_before).min(source_before - source_after);
    improvement >= improvement_threshold * added
}

/// An upper bound, a little generous, on the costs [`worth_moving`] accepts for this pair, or
/// `None` when none can be. Acceptance is monotone in the cost (a cheaper group is accepted
/// whenever a dearer one is), so the planner looks for the dearest acceptable group just below
/// this bound and checks candidates exactly with [`worth_moving`].
pub(crate) fn max_worth_moving(
    source: Fill,
    target: Fill,
    improvement_threshold: f64,
) -> Option<i64> {
    let gap = source.utilisation() - target.utilisation();
    if gap <= 0.0 {
        return None;
    }
    let fits = gap / (1.0 / source.capacity + 1.0 / target.capacity);
    let per_cost = (1.0 / source.capacity).min(1.0 / target.capacity);
    let by_ratio = gap / ((1.0 + improvement_threshold) * per_cost);
    let below_source = gap * target.capacity;
    let limit = fits.max(by_ratio.min(below_source));
    // Rounding slack: exact checks happen on the candidates anyway.
    let bound = limit * (1.0 + 1e-9) + 1.0;
    if bound >= i64::MAX as f64 {
        Some(i64::MAX)
    } else {
        Some(bound.floor() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(load: f64) -> Fill {
        Fill {
            load,
            capacity: 1.0,
        }
    }

    #[test]
    fn unit_costs_move_only_across_a_gap_of_two() {
        assert!(worth_moving(fill(3.0), fill(1.0), 1.0, 0.0));
        assert!(!worth_moving(fill(3.0), fill(2.0), 1.0, 0.0));
        assert!(!worth_moving(fill(2.0), fill(2.0), 1.0, 0.0));
    }

    #[test]
    fn overshoot_needs_the_improvement_threshold() {
        // 60 vs 20, moving 30: the target ends at 50, the pair's maximum falls by 10, the group
        // adds 30, so the ratio is 1/3.
        assert!(!worth_moving(fill(60.0), fill(20.0), 30.0, 0.5));
        assert!(worth_moving(fill(60.0), fill(20.0), 30.0, 0.3));
        // Moving 20 does not overshoot.
        assert!(worth_moving(fill(60.0), fill(20.0), 20.0, 0.5));
    }

    #[test]
    fn larger_target_capacity_is_used() {
        let small = Fill {
            load: 1.0,
            capacity: 1.0,
        };
        let big = Fill {
            load: 2.0,
            capacity: 3.0,
        };
        // 1/1 vs 2/3: moving the one unit would leave the big node at 1 = the small one's
        // utilisation before, no improvement.
        assert!(!worth_moving(small, big, 1.0, 0.0));
    }

    #[test]
    fn the_bound_is_at_or_above_every_accepted_cost() {
        for (s, t, theta) in [
            (100.0, 0.0, 0.5),
            (60.0, 20.0, 0.5),
            (60.0, 20.0, 0.0),
            (7.0, 3.0, 0.2),
        ] {
            let bound = max_worth_moving(fill(s), fill(t), theta).unwrap();
            for cost in 1..=200 {
                if worth_moving(fill(s), fill(t), cost as f64, theta) {
                    assert!(cost <= bound, "{s} {t} {theta}: {cost} > {bound}");
                }
            }
        }
        assert_eq!(max_worth_moving(fill(1.0), fill(1.0), 0.0), None);
    }
}
