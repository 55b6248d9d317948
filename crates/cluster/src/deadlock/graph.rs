//! The pure part of deadlock detection across servers: the servers' waits joined into one
//! graph between client sessions, its cycles, and the statement to cancel.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shoal_route::Place;

/// A client session that may hold backends on several servers: one of an endpoint's, or a
/// coordinator backend whose postgres_fdw connections work on the nodes for it. Ordered by
/// when its client connected, so the largest of a cycle is its youngest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// When the client connected, in microseconds since the Unix epoch.
    pub connected_us: i64,
    pub session: Session,
}

/// Whose session an [`Owner`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Session {
    /// An endpoint's session, by the number it got when it started.
    Endpoint(u64),
    /// A coordinator backend, by its process id there.
    Coordinator(i32),
}

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

/// Which session each known backend serves now, by server and process id.
pub type Holders = HashMap<(Place, i32), Owner>;

/// The sessions that wait for each other: an edge from a waiting backend's session to the
/// session of each backend it waits for, both known (waits on other backends end on their own,
/// or are the servers' to detect), with the servers where that wait is. A session waiting for
/// itself is not an edge.
pub type Graph = BTreeMap<Owner, BTreeMap<Owner, BTreeSet<Place>>>;

/// The graph of `waits` between the sessions of `holders`.
pub fn wait_for_graph(waits: &[Wait], holders: &Holders) -> Graph {
    let mut graph = Graph::new();
    for wait in waits {
        let Some(&waiter) = holders.get(&(wait.place, wait.waiter)) else {
            continue;
        };
        for holder in &wait.holders {
            match holders.get(&(wait.place, *holder)) {
                Some(&owner) if owner != waiter => {
                    graph
                        .entry(waiter)
                        .or_default()
                        .entry(owner)
                        .or_default()
                        .insert(wait.place);
                }
                _ => {}
            }
        }
    }
    graph
}

/// The sessions of one cycle of `graph`, if it has any (the first one a depth-first search from
/// the smallest session finds, so the same graph always gives the same cycle).
pub fn find_cycle(graph: &Graph) -> Option<Vec<Owner>> {
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
fn successors(graph: &Graph, node: Owner) -> Vec<Owner> {
    graph
        .get(&node)
        .map(|s| s.keys().rev().copied().collect())
        .unwrap_or_default()
}

/// Whether every wait of `cycle` can be on one server: then that server's own detector sees the
/// cycle and breaks it within its `deadlock_timeout`, and cancelling a statement of it too
/// would fail a second transaction.
fn within_one_server(cycle: &[Owner], graph: &Graph) -> bool {
    let mut common: Option<BTreeSet<Place>> = None;
    for (i, from) in cycle.iter().enumerate() {
        let to = cycle[(i + 1) % cycle.len()];
        let places = graph
            .get(from)
            .and_then(|edges| edges.get(&to))
            .cloned()
            .unwrap_or_default();
        common = Some(match common {
            None => places,
            Some(seen) => seen.intersection(&places).copied().collect(),
        });
    }
    common.is_some_and(|places| !places.is_empty())
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
/// waits that never existed at the same time; a true deadlock lasts, and is seen again. A
/// cycle one server sees whole is left to that server.
pub fn detect(waits: &[Wait], holders: &Holders, previous: Option<Victim>) -> Detection {
    let graph = wait_for_graph(waits, holders);
    let suspect = find_cycle(&graph)
        .filter(|cycle| !within_one_server(cycle, &graph))
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
    /// No cycle across servers.
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

    /// The endpoint session numbered `n`, whose client connected at `n` µs.
    fn s(n: u64) -> Owner {
        Owner {
            connected_us: n as i64,
            session: Session::Endpoint(n),
        }
    }

    fn owners(graph: &Graph, of: Owner) -> Vec<Owner> {
        graph[&of].keys().copied().collect()
    }

    /// Sessions 10 and 11 each hold a backend on both nodes: 10 has 101 on node 1 and 201 on
    /// node 2, 11 has 102 and 202.
    fn two_sessions() -> Holders {
        [
            ((ONE, 101), s(10)),
            ((TWO, 201), s(10)),
            ((ONE, 102), s(11)),
            ((TWO, 202), s(11)),
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
        assert_eq!(owners(&graph, s(10)), [s(11)]);
        assert_eq!(owners(&graph, s(11)), [s(10)]);
        assert_eq!(find_cycle(&graph), Some(vec![s(10), s(11)]));
        let victim = Victim {
            owner: s(11),
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
    fn a_coordinator_backend_and_an_endpoint_session_are_ordered_by_when_they_connected() {
        // Coordinator backend 7 connected after endpoint session 1 (at 5 µs against 1).
        let coordinator = Owner {
            connected_us: 5,
            session: Session::Coordinator(7),
        };
        let holders: Holders = [
            ((ONE, 101), s(1)),
            ((TWO, 201), s(1)),
            ((ONE, 301), coordinator),
            ((TWO, 302), coordinator),
        ]
        .into_iter()
        .collect();
        let waits = [wait(ONE, 101, &[301]), wait(TWO, 302, &[201])];
        let victim = Victim {
            owner: coordinator,
            place: TWO,
            pid: 302,
        };
        assert_eq!(detect(&waits, &holders, None), Detection::Suspect(victim));
    }

    #[test]
    fn a_cycle_one_server_sees_whole_is_left_to_it() {
        let holders = two_sessions();
        // Both waits on node 1: its own detector breaks this one.
        let waits = [wait(ONE, 102, &[101]), wait(ONE, 101, &[102])];
        assert!(find_cycle(&wait_for_graph(&waits, &holders)).is_some());
        assert_eq!(detect(&waits, &holders, None), Detection::Clear);
        // The same sessions also waiting on node 2: one edge has two servers, yet every
        // edge shares node 1, so node 1 still sees the whole cycle.
        let both = [
            wait(ONE, 102, &[101]),
            wait(ONE, 101, &[102]),
            wait(TWO, 201, &[202]),
        ];
        assert_eq!(detect(&both, &holders, None), Detection::Clear);
    }

    #[test]
    fn waits_without_a_cycle_or_on_other_backends_cancel_nothing() {
        let holders = two_sessions();
        // A chain, not a cycle.
        let chain = [wait(ONE, 102, &[101]), wait(TWO, 202, &[999])];
        assert_eq!(find_cycle(&wait_for_graph(&chain, &holders)), None);
        assert_eq!(detect(&chain, &holders, None), Detection::Clear);
        // A backend nobody knows (999) is no session: no edge through it.
        let through_other = [wait(ONE, 102, &[999]), wait(TWO, 999, &[201])];
        assert!(wait_for_graph(&through_other, &holders).is_empty());
        // A session's own backends waiting for each other are the server's business.
        let own = [wait(ONE, 101, &[101])];
        assert!(wait_for_graph(&own, &holders).is_empty());
        // A different suspect in the next round starts over.
        let first = Victim {
            owner: s(11),
            place: ONE,
            pid: 102,
        };
        let cycle = [wait(ONE, 102, &[101]), wait(TWO, 201, &[202])];
        let other = Victim {
            owner: s(11),
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
            ((ONE, 1), s(1)),
            ((TWO, 2), s(1)),
            ((ONE, 3), s(2)),
            ((TWO, 4), s(2)),
            ((ONE, 5), s(3)),
            ((TWO, 6), s(3)),
            ((ONE, 7), s(4)),
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
        assert_eq!(cycle, vec![s(1), s(2), s(3)]);
        assert_eq!(
            choose_victim(&cycle, &waits, &holders),
            Some(Victim {
                owner: s(3),
                place: TWO,
                pid: 6
            })
        );
    }
}
