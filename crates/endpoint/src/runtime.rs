//! Starting the endpoint: its instance lock, the router's view and the pools' targets kept
//! current, recovery of in-doubt transactions, and the listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::error::EndpointError;
use crate::gate::Group;
use crate::shared::{Options, Shared};
use crate::{listener, twophase};
use shoal_catalog::{model, ConnectParams};
use shoal_cluster::deadlock::{self, Victim};
use shoal_cluster::fence;
use shoal_cluster::servers::Servers;
use shoal_route::Place;

/// How often the router's view is read again from the catalog.
const TOPOLOGY_INTERVAL: Duration = Duration::from_millis(500);
/// How often recovery looks for in-doubt prepared transactions.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// A running endpoint.
pub struct Endpoint {
    pub shared: Arc<Shared>,
    pub address: SocketAddr,
}

/// Binds `listen`, takes the instance lock, loads the cluster, resolves what earlier
/// endpoints left in doubt, and serves until `shutdown` changes.
pub async fn start(
    params: ConnectParams,
    listen: &str,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> Result<(Endpoint, tokio::task::JoinHandle<()>), EndpointError> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        EndpointError::Protocol(format!(
            "cannot listen on {listen}: {e}; choose another address with --listen HOST:PORT"
        ))
    })?;
    let address = listener.local_addr()?;
    let instance = rand::random::<i32>().abs().max(1);
    let lock = lock_instance(&params, instance).await?;
    let shared = Arc::new(Shared::new(params.clone(), options, instance));
    let mut servers = Servers::default();
    refresh(&shared, &lock).await?;
    recover(&shared, &lock, &mut servers).await;
    // Moves wait for this endpoint from now on: its fence watcher runs before any client.
    let advertised = address.to_string();
    fence::register_instance(&lock, instance, &advertised).await?;
    tokio::spawn(deadlock::watch(
        params.clone(),
        EndpointSessions(shared.clone()),
        shutdown.clone(),
    ));
    tokio::spawn(watch_fences(
        shared.clone(),
        params.clone(),
        shutdown.clone(),
    ));
    let accept = tokio::spawn(listener::accept(shared.clone(), listener, shutdown.clone()));
    let duties = {
        let shared = shared.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let mut lock = Some(lock);
            let mut last_recovery = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(TOPOLOGY_INTERVAL) => {}
                    _ = shared.refresh_wanted.notified() => {}
                    _ = shutdown.changed() => break,
                }
                if lock.as_ref().is_none_or(Client::is_closed) {
                    // The coordinator restarted (or the connection broke): the instance lock
                    // is gone until it is taken again. Decisions stay safe meanwhile (the
                    // decision row's key orders a commit against another endpoint's recovery).
                    let locked = match lock_instance(&params, instance).await {
                        Ok(client) => fence::register_instance(&client, instance, &advertised)
                            .await
                            .map(|()| client)
                            .map_err(EndpointError::from),
                        Err(error) => Err(error),
                    };
                    match locked {
                        Ok(client) => {
                            lock = Some(client);
                            tracing::info!("the endpoint reconnected to the coordinator");
                        }
                        Err(error) => {
                            lock = None;
                            tracing::warn!(%error, "the coordinator is unreachable; will retry");
                            continue;
                        }
                    }
                }
                let client = lock.as_ref().expect("connected above");
                if let Err(error) = refresh(&shared, client).await {
                    tracing::warn!(%error, "reading the cluster's topology");
                }
                if last_recovery.elapsed() >= RECOVERY_INTERVAL {
                    recover(&shared, client, &mut servers).await;
                    last_recovery = Instant::now();
                }
            }
            accept.abort();
            if let Some(client) = &lock {
                let _ = fence::unregister_instance(client, instance).await;
            }
        })
    };
    Ok((Endpoint { shared, address }, duties))
}

/// How often the fence watcher reads the fences: a move's cutover waits about this long for
/// this endpoint, on top of the time its transactions in the group take to end.
const FENCE_INTERVAL: Duration = Duration::from_millis(10);
/// How often while one of its groups is closed (its writers wait for the fence to go).
const FENCE_INTERVAL_CLOSED: Duration = Duration::from_millis(1);

/// Closes the shard groups that moves fence, acknowledges each once no session works in it,
/// and reopens a group once its fence is lowered and its new placement read.
async fn watch_fences(
    shared: Arc<Shared>,
    params: ConnectParams,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client: Option<Client> = None;
    loop {
        // While a group is closed its writers wait: look often, to reopen it at once.
        let interval = if shared.gate.any_closed() {
            FENCE_INTERVAL_CLOSED
        } else {
            FENCE_INTERVAL
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = shoal_catalog::connect(&params, "shoal endpoint fences")
                .await
                .ok();
        }
        let Some(connected) = &client else {
            continue;
        };
        if let Err(error) = watch_once(&shared, connected).await {
            tracing::warn!(%error, "reading the moves' fences");
        }
    }
}

async fn watch_once(shared: &Shared, client: &Client) -> Result<(), EndpointError> {
    let fences = fence::raised(client, shared.instance).await?;
    let raised: HashMap<Group, i64> = fences
        .iter()
        .map(|(f, _)| {
            (
                (i64::from(f.colocation_id), f.shard_index as u32),
                f.operation_id,
            )
        })
        .collect();
    shared.gate.close(&raised);
    if shared.gate.has_closed_outside(&raised) {
        // The move committed (or gave up): read where the group is before anyone goes there
        // (the placements alone, in one read; the rest follows with the next full read).
        let current = shared.topology.read().expect("topology lock").clone();
        let moved = shoal_cluster::topology::with_current_placements(client, &current).await?;
        {
            let mut topology = shared.topology.write().expect("topology lock");
            *topology = Arc::new(moved);
            shared.placements_epoch.fetch_add(1, Ordering::SeqCst);
        }
        shared.gate.reopen_all_but(&raised);
        shared.refresh_wanted.notify_one();
    }
    for (group, operation) in shared.gate.drained() {
        let acknowledged = fences.iter().any(|(f, ack)| {
            *ack && f.operation_id == operation
                && (i64::from(f.colocation_id), f.shard_index as u32) == group
        });
        if raised.contains_key(&group) && !acknowledged {
            fence::acknowledge(client, operation, shared.instance).await?;
        }
    }
    Ok(())
}

/// A coordinator connection holding this instance's advisory lock for as long as it lives.
async fn lock_instance(params: &ConnectParams, instance: i32) -> Result<Client, EndpointError> {
    let lock = shoal_catalog::connect(params, "shoal endpoint").await?;
    lock.execute(
        "SELECT pg_catalog.pg_advisory_lock($1, $2)",
        &[&twophase::INSTANCE_LOCK_CLASS, &instance],
    )
    .await?;
    Ok(lock)
}

/// Reads the router's view and the servers again.
async fn refresh(shared: &Shared, client: &Client) -> Result<(), EndpointError> {
    // Sessions waiting for a read that starts after their request are released by this one.
    let generation = *shared.refreshed.borrow() + 1;
    let epoch = shared.placements_epoch.load(Ordering::SeqCst);
    let mut targets = HashMap::new();
    targets.insert(Place::Coordinator, shared.coordinator.clone());
    let nodes = model::list_nodes(client).await?;
    for node in &nodes {
        targets.insert(
            Place::Node(node.node_id),
            shared
                .coordinator
                .with_target(&node.host, node.port, &node.dbname),
        );
    }
    shared.pool.set_targets(targets);
    // The nodes' tables versions first, the tables then: the view is never older than the
    // versions it carries (a change in between fails a check, and the next read fixes it).
    let mut versions = HashMap::new();
    for node in &nodes {
        match tables_version(shared, node.node_id).await {
            Ok(version) => {
                versions.insert(node.node_id, version);
            }
            Err(error) => {
                tracing::debug!(node = node.node_id, %error, "reading a node's tables version")
            }
        }
    }
    let mut topology = shoal_cluster::topology::load_topology(client, Vec::new()).await?;
    topology.node_versions = Arc::new(versions);
    {
        let mut current = shared.topology.write().expect("topology lock");
        // A move switched a group while this was read: the watcher's view is newer.
        if shared.placements_epoch.load(Ordering::SeqCst) != epoch {
            shared.refresh_wanted.notify_one();
            return Ok(());
        }
        *current = Arc::new(topology);
    }
    shared.refreshed.send_replace(generation);
    Ok(())
}

async fn tables_version(shared: &Shared, node: i32) -> Result<i64, EndpointError> {
    let mut pooled = shared.pool.get(Place::Node(node)).await?;
    let result = pooled
        .conn
        .simple_query("SELECT shoal_worker.tables_version()")
        .await;
    pooled.reusable = result.is_ok();
    shared.pool.put(Place::Node(node), pooled);
    let rows = result?;
    rows.first()
        .and_then(|r| r[0].as_deref())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EndpointError::Protocol("no tables version".into()))
}

/// The endpoint's sessions as deadlock detection across servers sees them
/// ([`shoal_cluster::deadlock`]).
struct EndpointSessions(Arc<Shared>);

impl deadlock::Sessions for EndpointSessions {
    fn holders(&self) -> deadlock::Holders {
        let holds = self.0.holds.lock().expect("holds lock");
        holds.iter().map(|(k, (owner, _))| (*k, *owner)).collect()
    }

    /// Marks the victim's session, if it is one of this endpoint's, so that the cancellation
    /// reaches its client as a deadlock, and cancels the statement if the backend is one of
    /// the session's kept connections.
    async fn cancel(&self, victim: Victim) -> bool {
        let shared = &self.0;
        if !matches!(victim.owner.session, deadlock::Session::Endpoint(_)) {
            return false;
        }
        shared
            .deadlock_victims
            .lock()
            .expect("victims lock")
            .insert(victim.owner);
        shared.metrics.deadlock_broken();
        let cancel = {
            let holds = shared.holds.lock().expect("holds lock");
            match holds.get(&(victim.place, victim.pid)) {
                Some((owner, cancel)) if *owner == victim.owner => cancel.clone(),
                _ => return false,
            }
        };
        tracing::info!(
            place = ?victim.place,
            pid = victim.pid,
            "a deadlock across servers: cancelling one of its statements"
        );
        if let Err(error) = cancel.cancel().await {
            tracing::warn!(%error, "cancelling a deadlocked statement");
        }
        true
    }
}

async fn recover(shared: &Arc<Shared>, coordinator: &Client, servers: &mut Servers) {
    let mut every_server = true;
    for (place, params) in shared.pool.nodes() {
        if place == Place::Coordinator {
            continue;
        }
        if let Err(error) = servers
            .connect(place, &params, "shoal endpoint recovery")
            .await
        {
            every_server = false;
            tracing::warn!(?place, %error, "recovery cannot reach a node");
        }
    }
    let mut list: Vec<(Place, &Client)> = vec![(Place::Coordinator, coordinator)];
    list.extend(servers.open());
    let in_flight = |transaction: &str| shared.is_in_flight(transaction);
    match twophase::recover(
        coordinator,
        &list,
        every_server,
        shared.instance,
        &in_flight,
    )
    .await
    {
        Ok((committed, rolled_back)) => {
            let metrics = &shared.metrics;
            metrics
                .in_doubt_committed
                .fetch_add(committed, Ordering::Relaxed);
            metrics
                .in_doubt_rolled_back
                .fetch_add(rolled_back, Ordering::Relaxed);
        }
        Err(error) => tracing::warn!(%error, "recovering in-doubt transactions"),
    }
}
