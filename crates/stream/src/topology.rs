//! Topology detection for change capture: which workers gained, lost or changed a capture slot
//! since the slots were recorded, and whether stream tables must be re-initialized.
//!
//! `recorded` is the catalog's list of worker slots (one logical slot per worker, read by the
//! scheduler); `live` is the catalog's current list of active workers, NOT the set of reachable
//! ones: a worker that is down is still live (its slot persists on disk and is read again when it
//! is back), so an outage is never a topology change.
//!
//! Matching, in this order, each worker used at most once:
//! 1. same node id, host and port: `unchanged`;
//! 2. same node id, another address: `moved` (e.g. the node's port or host was updated);
//! 3. same host under another node id, when that host has exactly one unmatched recorded slot and
//!    one unmatched live worker: `moved` (a worker removed and re-added, on a new port or the same
//!    one: the same machine, so most likely the same data directory and slot). With several
//!    candidates on one host (a local cluster with every worker on 127.0.0.1) nothing is guessed:
//!    they are removed and added. A local cluster where one worker is removed and another added
//!    between two scheduler passes does look like a move; the caller's slot check (see
//!    [`TopologyChange::moved`]) catches it;
//! 4. the rest: `removed` (recorded only) and `added` (live only).
//!
//! A shard moved between existing workers changes neither list, so it is no topology change:
//! exactness through moves is the cutover barrier's business, not this module's.

use serde::{Deserialize, Serialize};

/// A worker's capture slot as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerSlot {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
    pub slot_name: String,
}

/// A worker the catalog currently lists as active.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LiveWorker {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyChange {
    /// Live workers without a recorded slot: create one.
    pub added: Vec<LiveWorker>,
    /// Recorded slots without a live worker: stop reading them, drop them if reachable.
    pub removed: Vec<WorkerSlot>,
    /// Recorded slots whose worker is now at another address: read the slot there, after
    /// checking it exists (if it does not, the worker counts as removed and added).
    pub moved: Vec<(WorkerSlot, LiveWorker)>,
    pub unchanged: Vec<(WorkerSlot, LiveWorker)>,
    /// No slot was ever recorded: capture starts from nothing.
    pub initial: bool,
}

impl TopologyChange {
    /// True when nothing but `unchanged` is present.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.moved.is_empty()
    }
}

/// Compares the recorded slots with the live workers; see the module docs for the matching.
pub fn diff_workers(recorded: &[WorkerSlot], live: &[LiveWorker]) -> TopologyChange {
    let mut rec_used = vec![false; recorded.len()];
    let mut live_used = vec![false; live.len()];
    let mut change = TopologyChange {
        initial: recorded.is_empty() && !live.is_empty(),
        ..Default::default()
    };
    let pair = |r: usize, l: usize, rec_used: &mut [bool], live_used: &mut [bool]| {
        rec_used[r] = true;
        live_used[l] = true;
        (recorded[r].clone(), live[l].clone())
    };

    for (r, slot) in recorded.iter().enumerate() {
        if let Some(l) = (0..live.len()).find(|&l| {
            !live_used[l]
                && live[l].node_id == slot.node_id
                && live[l].host == slot.host
                && live[l].port == slot.port
        }) {
            let p = pair(r, l, &mut rec_used, &mut live_used);
            change.unchanged.push(p);
        }
    }
    for (r, slot) in recorded.iter().enumerate() {
        if rec_used[r] {
            continue;
        }
        if let Some(l) = (0..live.len()).find(|&l| !live_used[l] && live[l].node_id == slot.node_id)
        {
            let p = pair(r, l, &mut rec_used, &mut live_used);
            change.moved.push(p);
        }
    }
    for (r, slot) in recorded.iter().enumerate() {
        if rec_used[r] {
            continue;
        }
        let same_host_recorded = (0..recorded.len())
            .filter(|&o| !rec_used[o] && recorded[o].host == slot.host)
            .count();
        let candidates: Vec<usize> = (0..live.len())
            .filter(|&l| !live_used[l] && live[l].host == slot.host)
            .collect();
        if same_host_recorded == 1 && candidates.len() == 1 {
            let p = pair(r, candidates[0], &mut rec_used, &mut live_used);
            change.moved.push(p);
        }
    }
    change.removed = recorded
        .iter()
        .zip(&rec_used)
        .filter(|(_, used)| !**used)
        .map(|(s, _)| s.clone())
        .collect();
    change.added = live
        .iter()
        .zip(&live_used)
        .filter(|(_, used)| !**used)
        .map(|(w, _)| w.clone())
        .collect();
    change
}

/// Whether every stream table must be re-initialized (slots created or re-created, then a full
/// refresh) because the slots alone can no longer prove that no change was missed:
///
/// - `initial`: there is no frontier to continue from;
/// - any `removed` slot: the changes it held past the last frontier are out of reach. That
///   includes a drained worker, because draining is not visible here; a caller that knows the
///   worker was drained (no placements, slot read past its last cutover barrier) uses
///   [`needs_reinit_given_drained`];
/// - a `moved` slot on another host: a different machine does not have the slot.
///
/// Not a reason: `added` workers (they hold no shards until a move puts some there, and a move's
/// target is captured from its cutover on), a worker on the same host at a new port (same data
/// directory, same slot; the caller checks the slot exists), shard moves, outages.
pub fn needs_reinit(change: &TopologyChange) -> bool {
    needs_reinit_given_drained(change, &[])
}

/// [`needs_reinit`], where removed workers in `drained_node_ids` are known to have been drained
/// with every change of theirs consumed, so dropping their slots loses nothing.
pub fn needs_reinit_given_drained(change: &TopologyChange, drained_node_ids: &[i32]) -> bool {
    change.initial
        || change
            .removed
            .iter()
            .any(|s| !drained_node_ids.contains(&s.node_id))
        || change.moved.iter().any(|(old, new)| old.host != new.host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(node_id: i32, host: &str, port: u16) -> WorkerSlot {
        WorkerSlot {
            node_id,
            host: host.into(),
            port,
            slot_name: format!("shoal_stream_{node_id}"),
        }
    }

    fn live(node_id: i32, host: &str, port: u16) -> LiveWorker {
        LiveWorker {
            node_id,
            host: host.into(),
            port,
        }
    }

    #[test]
    fn no_change() {
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [live(2, "w2", 5432), live(1, "w1", 5432)];
        let c = diff_workers(&rec, &now);
        assert!(c.is_empty());
        assert_eq!(c.unchanged.len(), 2);
        assert!(!c.initial);
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn worker_added() {
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [
            live(1, "w1", 5432),
            live(2, "w2", 5432),
            live(3, "w3", 5432),
        ];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.added, vec![live(3, "w3", 5432)]);
        assert!(c.removed.is_empty() && c.moved.is_empty());
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn worker_removed() {
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [live(1, "w1", 5432)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.removed, vec![slot(2, "w2", 5432)]);
        assert!(c.added.is_empty());
        assert!(needs_reinit(&c));
    }

    #[test]
    fn first_sight_of_live_workers() {
        let now = [live(1, "w1", 5432), live(2, "w2", 5432)];
        let c = diff_workers(&[], &now);
        assert!(c.initial);
        assert_eq!(c.added.len(), 2);
        assert!(needs_reinit(&c));
    }

    #[test]
    fn both_empty() {
        let c = diff_workers(&[], &[]);
        assert_eq!(c, TopologyChange::default());
        assert!(c.is_empty());
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn port_change_of_a_node() {
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [live(1, "w1", 5432), live(2, "w2", 6543)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.moved, vec![(slot(2, "w2", 5432), live(2, "w2", 6543))]);
        assert!(c.added.is_empty() && c.removed.is_empty());
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn node_moved_to_another_host_needs_reinit() {
        let rec = [slot(1, "w1", 5432)];
        let now = [live(1, "w9", 5432)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.moved.len(), 1);
        assert!(needs_reinit(&c));
    }

    #[test]
    fn shard_moved_between_existing_workers_is_no_change() {
        // Placements are not part of the topology: the same workers before and after.
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [live(1, "w1", 5432), live(2, "w2", 5432)];
        let c = diff_workers(&rec, &now);
        assert!(c.is_empty());
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn worker_drained_then_removed() {
        let rec = [
            slot(1, "w1", 5432),
            slot(2, "w2", 5432),
            slot(3, "w3", 5432),
        ];
        let now = [live(1, "w1", 5432), live(2, "w2", 5432)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.removed, vec![slot(3, "w3", 5432)]);
        // Draining is invisible to the diff: conservative unless the caller vouches for it.
        assert!(needs_reinit(&c));
        assert!(!needs_reinit_given_drained(&c, &[3]));
        assert!(needs_reinit_given_drained(&c, &[2]));
    }

    #[test]
    fn worker_re_added_with_same_host_and_new_port() {
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [live(1, "w1", 5432), live(7, "w2", 5440)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.moved, vec![(slot(2, "w2", 5432), live(7, "w2", 5440))]);
        assert!(c.added.is_empty() && c.removed.is_empty());
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn same_host_ambiguity_is_not_guessed() {
        // A local cluster: every worker on one host. Worker 2 removed, worker 3 added.
        let rec = [slot(1, "127.0.0.1", 5433), slot(2, "127.0.0.1", 5434)];
        let now = [
            live(1, "127.0.0.1", 5433),
            live(3, "127.0.0.1", 5435),
            live(4, "127.0.0.1", 5436),
        ];
        let c = diff_workers(&rec, &now);
        assert!(c.moved.is_empty());
        assert_eq!(c.removed, vec![slot(2, "127.0.0.1", 5434)]);
        assert_eq!(c.added.len(), 2);
        assert!(needs_reinit(&c));
    }

    #[test]
    fn same_address_under_a_new_node_id_is_moved() {
        // Removed and re-added at the same address: the node id is all that changed.
        let rec = [slot(1, "w1", 5432), slot(2, "w2", 5432)];
        let now = [live(1, "w1", 5432), live(5, "w2", 5432)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.moved, vec![(slot(2, "w2", 5432), live(5, "w2", 5432))]);
        assert!(!needs_reinit(&c));
    }

    #[test]
    fn swapped_ports_on_one_host_keep_node_ids() {
        // Node ids win over addresses: two nodes on one host exchanging ports are two moves.
        let rec = [slot(1, "h", 5433), slot(2, "h", 5434)];
        let now = [live(1, "h", 5434), live(2, "h", 5433)];
        let c = diff_workers(&rec, &now);
        assert_eq!(c.moved.len(), 2);
        assert!(c.moved.iter().all(|(s, l)| s.node_id == l.node_id));
        assert!(!needs_reinit(&c));
    }
}
