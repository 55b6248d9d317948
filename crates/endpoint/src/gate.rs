//! Which shard groups this endpoint may send statements to now. A move's fence closes a group:
//! transactions already in it go on (they must end before the move can switch), new ones wait
//! until the fence is lowered and the new placement is read.

use std::collections::HashMap;
use std::sync::Mutex;

/// A shard group: colocation group and shard index.
pub type Group = (i64, u32);

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Closed groups, with the operation that closed them.
    closed: HashMap<Group, i64>,
    /// Sessions working in each group now.
    active: HashMap<Group, usize>,
}

impl Gate {
    /// Enters `group` unless it is closed (then the caller waits and routes again).
    pub fn try_enter(&self, group: Group) -> bool {
        let mut state = self.state.lock().expect("gate lock");
        if state.closed.contains_key(&group) {
            return false;
        }
        *state.active.entry(group).or_default() += 1;
        true
    }

    pub fn leave(&self, group: Group) {
        let mut state = self.state.lock().expect("gate lock");
        if let Some(count) = state.active.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                state.active.remove(&group);
            }
        }
    }

    pub fn is_closed(&self, group: Group) -> bool {
        self.state
            .lock()
            .expect("gate lock")
            .closed
            .contains_key(&group)
    }

    /// Reopens the closed groups that `fences` no longer names; returns them.
    pub fn reopen_all_but(&self, fences: &HashMap<Group, i64>) -> Vec<Group> {
        let mut state = self.state.lock().expect("gate lock");
        let reopened: Vec<Group> = state
            .closed
            .keys()
            .filter(|g| !fences.contains_key(g))
            .copied()
            .collect();
        for group in &reopened {
            state.closed.remove(group);
        }
        reopened
    }

    pub fn any_closed(&self) -> bool {
        !self.state.lock().expect("gate lock").closed.is_empty()
    }

    /// Whether a group is closed that `fences` no longer names.
    pub fn has_closed_outside(&self, fences: &HashMap<Group, i64>) -> bool {
        let state = self.state.lock().expect("gate lock");
        state.closed.keys().any(|g| !fences.contains_key(g))
    }

    /// The groups closed now that no session works in any more.
    pub fn drained(&self) -> Vec<(Group, i64)> {
        let state = self.state.lock().expect("gate lock");
        state
            .closed
            .iter()
            .filter(|(g, _)| !state.active.contains_key(g))
            .map(|(g, o)| (*g, *o))
            .collect()
    }

    /// Groups to close, without reopening any (reopening waits for the new placement).
    pub fn close(&self, fences: &HashMap<Group, i64>) {
        let mut state = self.state.lock().expect("gate lock");
        for (group, operation) in fences {
            state.closed.insert(*group, *operation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_group_lets_its_sessions_finish_and_admits_no_new_one() {
        let gate = Gate::default();
        let group = (7, 3);
        assert!(gate.try_enter(group));
        gate.close(&HashMap::from([(group, 42)]));
        assert!(!gate.try_enter(group));
        assert!(gate.try_enter((7, 4)), "other groups stay open");
        assert!(gate.drained().is_empty(), "a session still works in it");
        gate.leave(group);
        assert_eq!(gate.drained(), vec![(group, 42)]);
        assert_eq!(gate.reopen_all_but(&HashMap::new()), vec![group]);
        assert!(gate.try_enter(group));
    }
}
