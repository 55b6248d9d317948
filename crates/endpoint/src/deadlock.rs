//! Deadlocks across servers (pure). Each PostgreSQL server detects the deadlocks among its own
//! backends, but a cycle through two servers (session A waits on node 1 for a row B locked
//! there, B waits on node 2 for a row A locked there) shows each server only a backend
//! waiting for one that is idle in its transaction: nobody would ever end it. The endpoint
//! knows which of Shoal's backends on every server belong to which of its sessions, so it joins
//! the servers' waits into one graph between sessions, and a cycle there is such a deadlock.
//! It then does what one server would: cancels one waiting statement of the cycle and reports
//! `deadlock detected` (SQLSTATE 40P01) to that session's client, whose transaction fails; the
//! others go on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shoal_route::Place;

/// A session of the endpoint, by the number it got when it started (later sessions have larger
/// numbers).
pub type Owner = u64;

/// One server's backend waiting for a lock, and the backends it waits for
/// (`pg_blocking_pids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub place: Place,
    pub waiter: i32,
    pub holders: Vec<i32>,
}

/// The statement to cancel to break a cycle: `owner`'s backend `pid` on `place`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Victim {
    pub owner: Owner,
    pub place: Place,
    pub pid: i32,
}

/// Which session each of Shoal's backends serves now, by server and process id.
pub type Holders = HashMap<(Place, i32), Owner>;

/// The sessions that wait for each other: an edge from a waiting backend's session to the
/// session of each backend it waits for, both the endpoint's (waits on other backends end on
/// their own, or are the servers' to detect). A session waiting for itself is not an edge.
pub fn wait_for_graph(waits: &[Wait], holders: &Holders) -> BTreeMap<Owner, BTreeSet<Owner>> {
    let mut graph: BTreeMap<Owner, BTreeSet<Owner>> = BTreeMap::new();
    for wait in waits {
        let Some(&waiter) = holders.get(&(wait.place, wait.waiter)) else {
            continue;
        };
        for holder in &wait.holders {
            match holders.get(&(wait.place, *holder)) {
                Some(&owner) if owner != waiter => {
                    graph.entry(waiter).or_default().insert(owner);
                }
                _ => {}
            }
        }
    }
    graph
}

/// The sessions of one cycle of `graph`, if it has any (the first one a depth-first search from
/// the smallest session finds, so the same graph always gives the same cycle).
pub fn find_cycle(graph: &BTreeMap<Owner, BTreeSet<Owner>>) -> Option<Vec<Owner>> {
    let mut done: HashSet<Owner> = HashSet::new();
    for &start in graph.keys() {
        if done.contains(&start) {
            continue;
        }
        // Iterative depth-first search; `path` is the current chain from `start`.
        let mut path: Vec<Owner> = vec![start];
        let mut next: Vec<Vec<Owner>> = vec![successors(graph, start)];
        while let Some(candidates) = next.last_mut() {
            let Some(node) = candidates.pop() else {
                done.insert(path.pop().expect("a node per frame"));
                next.pop();
                continue;
            };
            if let Some(at) = path.iter().position(|&n| n == node) {
                return Some(path[at..].to_vec());
            }
            if done.contains(&node) {
                continue;
            }
            path.push(node);
            next.push(successors(graph, node));
        }
    }
    None
}

/// Successors in reverse order, so popping visits them smallest first.
fn successors(graph: &BTreeMap<Owner, BTreeSet<Owner>>, node: Owner) -> Vec<Owner> {
    graph
        .get(&node)
        .map(|s| s.iter().rev().copied().collect())
        .unwrap_or_default()
}

/// The statement to cancel in `cycle`: the youngest session's wait for another session of the
/// cycle (the one that has done least, as a rule of thumb), the smallest server first.
pub fn choose_victim(cycle: &[Owner], waits: &[Wait], holders: &Holders) -> Option<Victim> {
    let owner = *cycle.iter().max()?;
    let mut candidates: Vec<Victim> = waits
        .iter()
        .filter(|w| holders.get(&(w.place, w.waiter)) == Some(&owner))
        .filter(|w| {
            w.holders.iter().any(|h| {
                holders
                    .get(&(w.place, *h))
                    .is_some_and(|o| *o != owner && cycle.contains(o))
            })
        })
        .map(|w| Victim {
            owner,
            place: w.place,
            pid: w.waiter,
        })
        .collect();
    candidates.sort_by_key(|v| (v.place, v.pid));
    candidates.into_iter().next()
}

/// One round of detection: the victim to cancel, if this round's waits and the previous
/// round's agree on it. The servers are read one after another, so a single round may join
/// waits that never existed at the same time; a true deadlock lasts, and is seen again.
pub fn detect(waits: &[Wait], holders: &Holders, previous: Option<Victim>) -> Detection {
    let suspect = find_cycle(&wait_for_graph(waits, holders))
        .and_then(|cycle| choose_victim(&cycle, waits, holders));
    match suspect {
        Some(victim) if previous == Some(victim) => Detection::Cancel(victim),
        Some(victim) => Detection::Suspect(victim),
        None => Detection::Clear,
    }
}

/// What a round of detection concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// No cycle.
    Clear,
    /// A cycle seen once: look again before cancelling anything.
    Suspect(Victim),
    /// The same cycle seen twice: cancel this statement.
    Cancel(Victim),
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Place = Place::Node(1);
    const TWO: Place = Place::Node(2);

    fn wait(place: Place, waiter: i32, holders: &[i32]) -> Wait {
        Wait {
            place,
            waiter,
            holders: holders.to_vec(),
        }
    }

    /// Sessions 10 and 11 each hold a backend on both nodes: 10 has 101 on node 1 and 201 on
    /// node 2, 11 has 102 and 202.
    fn two_sessions() -> Holders {
        [
            ((ONE, 101), 10),
            ((TWO, 201), 10),
            ((ONE, 102), 11),
            ((TWO, 202), 11),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn a_cycle_through_two_nodes_is_found_and_its_youngest_session_cancelled() {
        let holders = two_sessions();
        // On node 1, 11 waits for 10; on node 2, 10 waits for 11.
        let waits = [wait(ONE, 102, &[101]), wait(TWO, 201, &[202])];
        let graph = wait_for_graph(&waits, &holders);
        assert_eq!(graph[&10], BTreeSet::from([11]));
        assert_eq!(graph[&11], BTreeSet::from([10]));
        assert_eq!(find_cycle(&graph), Some(vec![10, 11]));
        let victim = Victim {
            owner: 11,
            place: ONE,
            pid: 102,
        };
        assert_eq!(detect(&waits, &holders, None), Detection::Suspect(victim));
        assert_eq!(
            detect(&waits, &holders, Some(victim)),
            Detection::Cancel(victim)
        );
    }

    #[test]
    fn waits_without_a_cycle_or_on_other_backends_cancel_nothing() {
        let holders = two_sessions();
        // A chain, not a cycle.
        let chain = [wait(ONE, 102, &[101]), wait(TWO, 202, &[999])];
        assert_eq!(find_cycle(&wait_for_graph(&chain, &holders)), None);
        assert_eq!(detect(&chain, &holders, None), Detection::Clear);
        // A backend that is not the endpoint's (999) is no session: no edge through it.
        let through_other = [wait(ONE, 102, &[999]), wait(TWO, 999, &[201])];
        assert!(wait_for_graph(&through_other, &holders).is_empty());
        // A session's own backends waiting for each other are the server's business.
        let own = [wait(ONE, 101, &[101])];
        assert!(wait_for_graph(&own, &holders).is_empty());
        // A different suspect in the next round starts over.
        let first = Victim {
            owner: 11,
            place: ONE,
            pid: 102,
        };
        let cycle = [wait(ONE, 102, &[101]), wait(TWO, 201, &[202])];
        let other = Victim {
            owner: 11,
            place: ONE,
            pid: 103,
        };
        assert_eq!(
            detect(&cycle, &holders, Some(other)),
            Detection::Suspect(first)
        );
    }

    #[test]
    fn a_longer_cycle_is_found_among_other_waits() {
        let holders: Holders = [
            ((ONE, 1), 1),
            ((TWO, 2), 1),
            ((ONE, 3), 2),
            ((TWO, 4), 2),
            ((ONE, 5), 3),
            ((TWO, 6), 3),
            ((ONE, 7), 4),
        ]
        .into_iter()
        .collect();
        // 4 -> 1 (a tail into the cycle), 1 -> 2 -> 3 -> 1.
        let waits = [
            wait(ONE, 7, &[1]),
            wait(TWO, 2, &[4]),
            wait(ONE, 3, &[5]),
            wait(TWO, 6, &[2]),
        ];
        let cycle = find_cycle(&wait_for_graph(&waits, &holders)).unwrap();
        assert_eq!(cycle, vec![1, 2, 3]);
        assert_eq!(
            choose_victim(&cycle, &waits, &holders),
            Some(Victim {
                owner: 3,
                place: TWO,
                pid: 6
            })
        );
    }
}
