//! The shell of deadlock detection across servers: reads every server's lock waits once a
//! second, learns which backends serve which session, and cancels a victim [`super::graph`]
//! chose.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::graph::{self, Detection, Holders, Owner, Session, Victim, Wait};
use crate::servers::Servers;
use shoal_catalog::{model, ConnectParams};
use shoal_route::Place;

/// How often the servers' lock waits are joined: about PostgreSQL's own `deadlock_timeout`, so
/// a deadlock across servers ends in one to two of these.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a coordinator backend's postgres_fdw connections are called on the nodes (the foreign
/// servers' `application_name`; postgres_fdw puts the backend's process id for `%p`): how a
/// node's backend is known to work for a coordinator session.
pub const COORDINATOR_APPLICATION_NAME: &str = "shoal coordinator %p";
const COORDINATOR_LABEL: &str = "shoal coordinator ";

/// Coordinator sessions' statements this process cancelled to break deadlocks across servers
/// (an endpoint counts its own sessions' apart), for `/metrics`.
pub static COORDINATOR_SESSIONS_CANCELLED: AtomicU64 = AtomicU64::new(0);

/// The sessions a process serves itself (an endpoint's), which deadlock detection joins with
/// the coordinator's.
pub trait Sessions: Send + Sync + 'static {
    /// Which of its sessions each of its backends serves now, by server and process id.
    fn holders(&self) -> Holders;
    /// Takes `victim`'s statement as a deadlock's, to report it so to the client if `victim`
    /// is one of its sessions, and cancels it if the waiting backend is one of its own: `false`
    /// when it is not (a backend that works for its session's coordinator connection), which
    /// the caller then cancels on the server.
    fn cancel(&self, victim: Victim) -> impl Future<Output = bool> + Send;
}

/// No sessions of one's own: only coordinator sessions are watched.
pub struct CoordinatorOnly;

impl Sessions for CoordinatorOnly {
    fn holders(&self) -> Holders {
        Holders::new()
    }

    async fn cancel(&self, _victim: Victim) -> bool {
        false
    }
}

/// The coordinator process id in a node backend's `application_name`, if a coordinator
/// session's postgres_fdw opened it.
pub fn coordinator_pid(application_name: &str) -> Option<i32> {
    application_name
        .strip_prefix(COORDINATOR_LABEL)?
        .parse()
        .ok()
        .filter(|pid: &i32| *pid > 0)
}

/// A node backend working for the coordinator backend `coordinator_pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labelled {
    pub place: Place,
    pub pid: i32,
    pub coordinator_pid: i32,
    /// When the node backend connected, in microseconds since the epoch.
    pub connected_us: i64,
}

/// `sessions`' holders with the coordinator's sessions added: each labelled backend, and the
/// coordinator backend itself, belongs to that backend's session; that is the endpoint's
/// session when the coordinator backend is one of an endpoint's connections, otherwise the
/// coordinator backend's own, known by when it connected (`connected_us`, by process id; a
/// backend missing there has ended and is left out). Where the coordinator does not show when
/// it connected (a role without `pg_read_all_stats` sees that of its own sessions only), its
/// first node connection's time stands in.
pub fn with_coordinator_sessions(
    mut holders: Holders,
    labelled: &[Labelled],
    connected_us: &HashMap<i32, Option<i64>>,
) -> Holders {
    for backend in labelled {
        let coordinator_pid = backend.coordinator_pid;
        let owner = match holders.get(&(Place::Coordinator, coordinator_pid)) {
            Some(owner) => *owner,
            None => match connected_us.get(&coordinator_pid) {
                Some(connected) => Owner {
                    connected_us: connected.unwrap_or_else(|| {
                        labelled
                            .iter()
                            .filter(|l| l.coordinator_pid == coordinator_pid)
                            .map(|l| l.connected_us)
                            .min()
                            .unwrap_or(backend.connected_us)
                    }),
                    session: Session::Coordinator(coordinator_pid),
                },
                None => continue,
            },
        };
        holders.insert((backend.place, backend.pid), owner);
        holders
            .entry((Place::Coordinator, backend.coordinator_pid))
            .or_insert(owner);
    }
    holders
}

/// Breaks deadlocks across servers until `shutdown` changes: every [`INTERVAL`] reads the lock
/// waits of the coordinator and every node, and cancels one statement of a cycle seen in two
/// rounds in a row (coordinator sessions' itself, `sessions`' through it).
pub async fn watch<S: Sessions>(
    params: ConnectParams,
    sessions: S,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut servers = Servers::default();
    let mut previous: Option<Victim> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        previous = match round(&params, &sessions, &mut servers, previous).await {
            Ok(Detection::Clear) => None,
            Ok(Detection::Suspect(victim)) => Some(victim),
            Ok(Detection::Cancel(victim)) => {
                if !sessions.cancel(victim).await {
                    cancel_on_server(&servers, victim).await;
                }
                None
            }
            Err(error) => {
                tracing::debug!(%error, "deadlock detection could not read the coordinator");
                None
            }
        };
    }
}

/// One round: every server's waits, who holds what, and what [`graph::detect`] makes of it.
async fn round<S: Sessions>(
    params: &ConnectParams,
    sessions: &S,
    servers: &mut Servers,
    previous: Option<Victim>,
) -> Result<Detection, tokio_postgres::Error> {
    let mut targets = vec![(Place::Coordinator, params.clone())];
    if let Some(coordinator) = connect(servers, Place::Coordinator, params).await {
        let nodes = model::list_nodes(coordinator).await.unwrap_or_default();
        targets.extend(nodes.iter().map(|n| {
            (
                Place::Node(n.node_id),
                params.with_target(&n.host, n.port, &n.dbname),
            )
        }));
    }
    let mut waits = Vec::new();
    let mut labelled = Vec::new();
    for (place, target) in &targets {
        let Some(client) = connect(servers, *place, target).await else {
            continue;
        };
        match read_server(client, *place).await {
            Ok((w, l)) => {
                waits.extend(w);
                labelled.extend(l);
            }
            Err(error) => tracing::debug!(?place, %error, "reading a server's lock waits"),
        }
    }
    let holders = sessions.holders();
    if !waits.iter().any(|w| {
        holders.contains_key(&(w.place, w.waiter))
            || labelled
                .iter()
                .any(|l| l.place == w.place && l.pid == w.waiter)
    }) {
        return Ok(Detection::Clear);
    }
    let mut coordinator_pids: Vec<i32> = labelled.iter().map(|l| l.coordinator_pid).collect();
    coordinator_pids.sort_unstable();
    coordinator_pids.dedup();
    let connected_us = match servers.get(Place::Coordinator) {
        Some(coordinator) => connected_at(coordinator, &coordinator_pids).await?,
        None => HashMap::new(),
    };
    let holders = with_coordinator_sessions(holders, &labelled, &connected_us);
    Ok(graph::detect(&waits, &holders, previous))
}

/// The connection to `place`, opened if needed; `None`, logged, when the server cannot be
/// reached (no cycle through it is seen this round).
async fn connect<'a>(
    servers: &'a mut Servers,
    place: Place,
    params: &ConnectParams,
) -> Option<&'a Client> {
    match servers.connect(place, params, "shoal deadlocks").await {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::debug!(?place, %error, "deadlock detection cannot reach a server");
            None
        }
    }
}

/// A server's lock waits, and its backends that work for coordinator sessions.
async fn read_server(
    client: &Client,
    place: Place,
) -> Result<(Vec<Wait>, Vec<Labelled>), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid, application_name,
                    CASE WHEN wait_event_type = 'Lock' THEN pg_catalog.pg_blocking_pids(pid) END,
                    coalesce((extract(epoch FROM backend_start) * 1000000)::int8, 0)
             FROM pg_catalog.pg_stat_activity
             WHERE datname = pg_catalog.current_database()
               AND (wait_event_type = 'Lock' OR application_name LIKE $1)",
            &[&format!("{COORDINATOR_LABEL}%")],
        )
        .await?;
    let mut waits = Vec::new();
    let mut labelled = Vec::new();
    for row in rows {
        let pid: i32 = row.get(0);
        let name: Option<String> = row.get(1);
        if let Some(coordinator_pid) = name.as_deref().and_then(coordinator_pid) {
            labelled.push(Labelled {
                place,
                pid,
                coordinator_pid,
                connected_us: row.get(3),
            });
        }
        if let Some(holders) = row.get::<_, Option<Vec<i32>>>(2) {
            waits.push(Wait {
                place,
                waiter: pid,
                holders,
            });
        }
    }
    Ok((waits, labelled))
}

/// When each of the coordinator backends `pids` that still run connected, in microseconds
/// since the epoch, where this role may see it.
async fn connected_at(
    coordinator: &Client,
    pids: &[i32],
) -> Result<HashMap<i32, Option<i64>>, tokio_postgres::Error> {
    if pids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = coordinator
        .query(
            "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8
             FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1)",
            &[&pids],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Cancels the victim's waiting statement where it waits (on a node, postgres_fdw passes the
/// error on to the coordinator session, whose transaction fails), if that backend still waits
/// for a lock.
async fn cancel_on_server(servers: &Servers, victim: Victim) {
    let Some(client) = servers.get(victim.place) else {
        return;
    };
    let cancelled = client
        .query_opt(
            "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity
             WHERE pid = $1 AND wait_event_type = 'Lock'",
            &[&victim.pid],
        )
        .await;
    match cancelled {
        Ok(Some(row)) if row.get::<_, bool>(0) => {
            if matches!(victim.owner.session, Session::Coordinator(_)) {
                COORDINATOR_SESSIONS_CANCELLED.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                place = ?victim.place,
                pid = victim.pid,
                session = ?victim.owner.session,
                "a deadlock across servers: cancelled a waiting statement"
            )
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(
            place = ?victim.place,
            %error,
            "cancelling a deadlocked statement (the role Shoal connects as needs to be a member \
             of pg_signal_backend, or of the role that runs it)"
        ),
    }
}

/// Microseconds since the epoch now: when an endpoint session's client connected.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_label_names_its_backend() {
        assert_eq!(coordinator_pid("shoal coordinator 4242"), Some(4242));
        assert_eq!(coordinator_pid("shoal coordinator "), None);
        assert_eq!(coordinator_pid("shoal coordinator -1"), None);
        assert_eq!(coordinator_pid("postgres_fdw"), None);
        assert_eq!(coordinator_pid("shoal endpoint"), None);
    }

    #[test]
    fn labelled_backends_join_their_coordinator_session_or_the_endpoint_session_behind_it() {
        let endpoint = Owner {
            connected_us: 1,
            session: Session::Endpoint(1),
        };
        // Coordinator backend 50 is endpoint session 1's connection; 60 is an application's.
        let holders: Holders = [((Place::Coordinator, 50), endpoint)].into_iter().collect();
        let labelled = [
            Labelled {
                place: Place::Node(1),
                pid: 500,
                coordinator_pid: 50,
                connected_us: 4,
            },
            Labelled {
                place: Place::Node(1),
                pid: 600,
                coordinator_pid: 60,
                connected_us: 10,
            },
            // 70 has ended on the coordinator: its node backend is nobody's now.
            Labelled {
                place: Place::Node(2),
                pid: 700,
                coordinator_pid: 70,
                connected_us: 11,
            },
            // When 80 connected is hidden: its first node connection's time stands in.
            Labelled {
                place: Place::Node(1),
                pid: 801,
                coordinator_pid: 80,
                connected_us: 21,
            },
            Labelled {
                place: Place::Node(2),
                pid: 802,
                coordinator_pid: 80,
                connected_us: 20,
            },
        ];
        let connected = HashMap::from([(50, Some(3)), (60, Some(9)), (80, None)]);
        let holders = with_coordinator_sessions(holders, &labelled, &connected);
        let application = Owner {
            connected_us: 9,
            session: Session::Coordinator(60),
        };
        assert_eq!(holders[&(Place::Node(1), 500)], endpoint);
        assert_eq!(holders[&(Place::Coordinator, 50)], endpoint);
        assert_eq!(holders[&(Place::Node(1), 600)], application);
        assert_eq!(holders[&(Place::Coordinator, 60)], application);
        assert!(!holders.contains_key(&(Place::Node(2), 700)));
        let hidden = Owner {
            connected_us: 20,
            session: Session::Coordinator(80),
        };
        assert_eq!(holders[&(Place::Node(1), 801)], hidden);
        assert_eq!(holders[&(Place::Node(2), 802)], hidden);
        assert_eq!(holders[&(Place::Coordinator, 80)], hidden);
        assert_eq!(holders.len(), 7);
    }
}
