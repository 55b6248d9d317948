//! What every session of one endpoint shares: the pools, the router's view of the cluster,
//! the instance's identity for two-phase commit, and the counters behind `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::gate::Gate;
use crate::pool::Pool;
use crate::server::CancelHandle;
use crate::twophase;
use shoal_catalog::ConnectParams;
use shoal_cluster::deadlock::{self, Owner, Session};
use shoal_route::{Place, Topology};

/// What a session runs now, for a cancel request to interrupt.
pub type Running = Arc<Mutex<Option<CancelHandle>>>;

/// How an endpoint runs, as `shoal serve` was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Connections per node a read split across shards uses at once, each answering for a
    /// share of the node's shards: a node runs one statement per connection on one core.
    pub scatter_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scatter_connections: 4,
        }
    }
}

pub struct Shared {
    /// Shoal's own connection parameters to the coordinator.
    pub coordinator: ConnectParams,
    pub options: Options,
    pub pool: Pool,
    /// Every session's view differs only in its search path.
    pub topology: RwLock<Arc<Topology>>,
    /// This endpoint's id in its prepared transactions; it holds an advisory lock on it.
    pub instance: i32,
    serial: AtomicU64,
    /// Transactions between their first PREPARE and their last COMMIT PREPARED.
    in_flight: Mutex<HashSet<String>>,
    pub metrics: Metrics,
    /// Sessions by the cancel key the endpoint gave their clients: what each runs now.
    pub cancels: Mutex<HashMap<(i32, i32), Running>>,
    /// Shard groups open to this endpoint's statements (moves close them at cutover).
    pub gate: Gate,
    /// Bumped (under the topology's lock) each time a fence's end brings new placements: a
    /// view read before must not be published after, nor routed by once its group reopened.
    pub placements_epoch: AtomicU64,
    /// A session asks for the topology to be read again now (after DDL it ran), and waits
    /// for `refreshed` to pass the generation it saw.
    pub refresh_wanted: tokio::sync::Notify,
    pub refreshed: tokio::sync::watch::Sender<u64>,
    /// The session each of Shoal's held backends serves, by server and process id, and how to
    /// cancel its statement: what deadlock detection across servers joins the servers' waits by.
    pub holds: Mutex<HashMap<(Place, i32), (Owner, CancelHandle)>>,
    /// Sessions whose statement was cancelled to break a deadlock across servers: the error
    /// that cancellation brings is reported to the client as the deadlock it is.
    pub deadlock_victims: Mutex<HashSet<Owner>>,
    next_owner: AtomicU64,
}

impl Shared {
    pub fn new(coordinator: ConnectParams, options: Options, instance: i32) -> Shared {
        Shared {
            coordinator,
            options,
            pool: Pool::default(),
            topology: RwLock::new(Arc::new(Topology::default())),
            instance,
            serial: AtomicU64::new(0),
            in_flight: Mutex::new(HashSet::new()),
            metrics: Metrics::default(),
            cancels: Mutex::new(HashMap::new()),
            gate: Gate::default(),
            placements_epoch: AtomicU64::new(0),
            refresh_wanted: tokio::sync::Notify::new(),
            refreshed: tokio::sync::watch::channel(0).0,
            holds: Mutex::new(HashMap::new()),
            deadlock_victims: Mutex::new(HashSet::new()),
            next_owner: AtomicU64::new(1),
        }
    }

    /// Has the topology read again and waits (up to two seconds) until it was.
    pub async fn refresh_topology(&self) {
        let mut refreshed = self.refreshed.subscribe();
        let seen = *refreshed.borrow_and_update();
        self.refresh_wanted.notify_one();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while *refreshed.borrow_and_update() <= seen {
                if refreshed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Who a new session is to deadlock detection: connected now, numbered after every
    /// earlier one.
    pub fn next_owner(&self) -> Owner {
        Owner {
            connected_us: deadlock::watch::now_us(),
            session: Session::Endpoint(self.next_owner.fetch_add(1, Ordering::Relaxed)),
        }
    }

    pub fn next_transaction(&self) -> String {
        twophase::transaction_id(self.instance, self.serial.fetch_add(1, Ordering::Relaxed))
    }

    /// Marks a transaction as being committed by this endpoint until the guard drops.
    pub fn in_flight(self: &Arc<Self>, transaction: &str) -> InFlight {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(transaction.to_string());
        InFlight {
            shared: self.clone(),
            transaction: transaction.to_string(),
        }
    }

    pub fn is_in_flight(&self, transaction: &str) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .contains(transaction)
    }
}

pub struct InFlight {
    shared: Arc<Shared>,
    transaction: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared
            .in_flight
            .lock()
            .expect("in-flight lock")
            .remove(&self.transaction);
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub statements_routed: AtomicU64,
    pub statements_coordinator: AtomicU64,
    pub statements_refused: AtomicU64,
    pub statements_scattered: AtomicU64,
    pub participants_joined: AtomicU64,
    pub two_phase_commits: AtomicU64,
    pub in_doubt_committed: AtomicU64,
    pub in_doubt_rolled_back: AtomicU64,
    pub deadlocks_broken: AtomicU64,
}

impl Metrics {
    pub fn routed(&self) {
        self.statements_routed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn to_coordinator(&self) {
        self.statements_coordinator.fetch_add(1, Ordering::Relaxed);
    }
    pub fn deadlock_broken(&self) {
        self.deadlocks_broken.fetch_add(1, Ordering::Relaxed);
    }
    pub fn scattered(&self) {
        self.statements_scattered.fetch_add(1, Ordering::Relaxed);
    }
    pub fn refused(&self) {
        self.statements_refused.fetch_add(1, Ordering::Relaxed);
    }
    pub fn participants_joined(&self) {
        self.participants_joined.fetch_add(1, Ordering::Relaxed);
    }
    pub fn two_phase_commit(&self) {
        self.two_phase_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// `name value` pairs in Prometheus' text format, without HELP lines.
    pub fn render(&self, pool: &Pool) -> Vec<(&'static str, &'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("shoal_endpoint_connections_total", "Client connections accepted", get(&self.connections_total)),
            ("shoal_endpoint_connections_open", "Client connections open", get(&self.connections_open)),
            ("shoal_endpoint_statements_routed_total", "Statements run on one server by the endpoint (single shard group or reference write)", get(&self.statements_routed)),
            ("shoal_endpoint_statements_coordinator_total", "Statements the endpoint passed to the coordinator", get(&self.statements_coordinator)),
            ("shoal_endpoint_statements_scattered_total", "Aggregates split across every node by the endpoint and merged on the coordinator", get(&self.statements_scattered)),
            ("shoal_endpoint_statements_refused_total", "Statements refused because the transaction's path could not run them", get(&self.statements_refused)),
            ("shoal_endpoint_two_phase_commits_total", "Transactions committed with two-phase commit", get(&self.two_phase_commits)),
            ("shoal_endpoint_in_doubt_committed_total", "Prepared transactions committed by recovery", get(&self.in_doubt_committed)),
            ("shoal_endpoint_in_doubt_rolled_back_total", "Prepared transactions rolled back by recovery", get(&self.in_doubt_rolled_back)),
            ("shoal_endpoint_deadlocks_broken_total", "Deadlocks across servers broken by cancelling one of their statements", get(&self.deadlocks_broken)),
            ("shoal_endpoint_pool_connections_open", "Shoal's connections to the servers, open", pool.open.load(Ordering::Relaxed) as u64),
            ("shoal_endpoint_pool_connections_in_use", "Shoal's connections to the servers, in use by a session", pool.in_use.load(Ordering::Relaxed) as u64),
        ]
    }
}
