//! The sharded cluster's operations: registering nodes, distributing tables (hash, reference,
//! distributed schemas), undistributing them, and cleaning up after failures.
//!
//! Each operation follows one shape: validate everything first on the coordinator (bad input
//! changes nothing), write a cleanup record before creating any object on a node, build the
//! shards on the nodes, then switch the coordinator over in one transaction that also deletes the
//! cleanup records. Either that transaction commits, or the records are still there and the
//! objects they name are removed.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use tokio_postgres::Client;

use shoal_catalog::{check_version, connect, ConnectParams};

pub mod capture;
pub mod check;
mod checks;
pub mod cleanup;
pub mod deadlock;
pub mod distribute;
mod error;
pub mod explain;
pub mod fence;
mod init;
pub mod inspect;
pub mod layout;
pub mod locks;
pub mod nodes;
pub mod placement;
pub mod privileges;
pub mod pushdown;
pub mod reference;
mod resolve;
mod schema;
pub mod servers;
pub mod statistics;
mod switch;
pub mod topology;
mod undistribute;

pub use distribute::{
    distribute_table, distribute_tables, Colocate, DistributeReport, DistributeRequest,
};
pub use error::{pg_message, ClusterError};
pub use init::{init_cluster, ClusterInit};
pub use reference::reference_table;
pub use resolve::{resolve_node, NodeRef};
pub use schema::{distribute_schema, sync_schema, SchemaReport};
pub use undistribute::undistribute_table;

/// A handle on a Shoal cluster: the coordinator's connection parameters and one autocommit
/// connection to it. Operations open further connections (to nodes, or a second coordinator
/// connection for a long transaction) as they need them.
pub struct Cluster {
    params: ConnectParams,
    client: Client,
    label: String,
    /// Idle coordinator connections kept for reuse, with their labels (see
    /// [`Cluster::pooled_coordinator`]).
    idle: Mutex<Vec<(String, Client)>>,
}

/// At most this many idle coordinator connections are kept per handle.
const MAX_IDLE: usize = 4;

impl Cluster {
    /// Connects to the coordinator and checks that its catalog matches this binary.
    pub async fn connect(params: ConnectParams) -> Result<Cluster, ClusterError> {
        Cluster::connect_labelled(params, "shoal").await
    }

    /// Like [`Cluster::connect`], with `label` as the catalog connection's `application_name`;
    /// operations started on this handle put it at the front of their own connections' labels
    /// (a background task's moves show which job and task they belong to).
    pub async fn connect_labelled(
        params: ConnectParams,
        label: &str,
    ) -> Result<Cluster, ClusterError> {
        let client = connect(&params, label).await?;
        check_version(&client).await?;
        Ok(Cluster {
            params,
            client,
            label: label.to_string(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// What this handle's connections are labelled with (`shoal` unless told otherwise).
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn params(&self) -> &ConnectParams {
        &self.params
    }

    /// The autocommit catalog connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A new coordinator connection, labelled for `pg_stat_activity`.
    pub async fn coordinator(&self, label: &str) -> Result<Client, ClusterError> {
        Ok(connect(&self.params, label).await?)
    }

    /// A coordinator connection for a short transaction that runs often (a stream table's
    /// refresh): an idle one of this handle's with the same label, or a new one. It goes back to
    /// the pool when dropped, unless it was closed; a transaction left open is rolled back first
    /// (tokio-postgres queues the `ROLLBACK` ahead of any later use).
    pub async fn pooled_coordinator(&self, label: &str) -> Result<PooledClient<'_>, ClusterError> {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.iter()
                .position(|(l, c)| l == label && !c.is_closed())
                .map(|i| idle.swap_remove(i).1)
        };
        let client = match reused {
            Some(client) => client,
            None => self.coordinator(label).await?,
        };
        Ok(PooledClient {
            cluster: self,
            label: label.to_string(),
            client: Some(client),
        })
    }

    /// A new connection to a node, labelled for `pg_stat_activity`.
    pub async fn node_client(
        &self,
        node: &shoal_catalog::model::Node,
        label: &str,
    ) -> Result<Client, ClusterError> {
        let params = self.params.with_target(&node.host, node.port, &node.dbname);
        connect(&params, label)
            .await
            .map_err(|e| ClusterError::NodeUnreachable {
                address: node.address(),
                reason: match e {
                    shoal_catalog::CatalogError::Connect { source, .. } => pg_message(&source),
                    other => other.to_string(),
                },
            })
    }
}

/// A coordinator connection borrowed from a [`Cluster`]'s pool.
pub struct PooledClient<'a> {
    cluster: &'a Cluster,
    label: String,
    client: Option<Client>,
}

impl Deref for PooledClient<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client.is_closed() {
            return;
        }
        let mut idle = self.cluster.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((std::mem::take(&mut self.label), client));
        }
    }
}
