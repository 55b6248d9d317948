//! Capture points: the logical slot on every worker from which stream tables are fed, and the catalog rows that track them. Here because
//! shard moves must create the target's slot before their cutover.

use tokio_postgres::Client;

use crate::error::{ClusterError, PgContext};
use crate::Cluster;
use shoal_catalog::model::Node;

/// One slot per server, shared by every stream table. `test_decoding` ships with PostgreSQL and
/// can drop changes that carry a replication origin (`only-local`): those are the shard mover's
/// own (initial copy and catch-up), which must never be captured twice.
pub const SLOT_NAME: &str = "shoal_capture";
pub const PLUGIN: &str = "test_decoding";
/// The coordinator as a source of changes in `shoal.change_buffer` (reference tables, captured
/// there by a trigger).
pub const COORDINATOR_NODE: i32 = 0;

/// Flushes a server's WAL up to now, whatever its `synchronous_commit`: a commit waits for the
/// flush only when its transaction wrote WAL (an xid alone writes none), so the transaction
/// writes a transactional logical message. Decoders see it as a `message:` line and skip it.
pub const FLUSH_WAL_SQL: &str = "BEGIN; SET LOCAL synchronous_commit = on; \
     SELECT pg_logical_emit_message(true, 'shoal', 'flush'); COMMIT";

/// Whether any stream table captures changes (then every node needs its slot).
pub async fn capture_active(cluster: &Cluster) -> Result<bool, ClusterError> {
    Ok(cluster
        .client()
        .query_one("SELECT EXISTS (SELECT 1 FROM shoal.worker_slot)", &[])
        .await?
        .get(0))
}

/// Creates the slot on a server if it is missing and returns its position: changes committed
/// after it will be captured. Creating a slot waits for the server's running transactions, so
/// call it with no transaction of ours open there.
pub async fn ensure_slot(client: &Client) -> Result<String, ClusterError> {
    let existing = client
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn, restart_lsn)::text FROM pg_replication_slots
             WHERE slot_name = $1",
            &[&SLOT_NAME],
        )
        .await?;
    if let Some(row) = existing {
        return Ok(row.get(0));
    }
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)",
            &[&SLOT_NAME, &PLUGIN],
        )
        .await
        .context(|| "creating the capture slot".to_string())?;
    Ok(row.get(0))
}

/// Refuses, before anything is created, when this role may not read changes from a node
/// (logical slots need the REPLICATION attribute).
pub async fn check_capture_privileges(cluster: &Cluster) -> Result<(), ClusterError> {
    for node in shoal_catalog::model::list_nodes(cluster.client()).await? {
        if let Some(missing) = crate::privileges::of_node(cluster, &node)
            .await?
            .missing(crate::privileges::Need::Replication)
        {
            return Err(ClusterError::Unsupported(format!(
                "stream tables read every node's changes from a logical slot, and on node {}: {missing}",
                node.node_id
            )));
        }
    }
    Ok(())
}

/// Makes sure a node has its capture slot and its `shoal.worker_slot` row (whose frontier
/// starts at the slot's position).
pub async fn ensure_node_slot(cluster: &Cluster, node: &Node) -> Result<(), ClusterError> {
    let client = cluster.node_client(node, "shoal capture").await?;
    let lsn = ensure_slot(&client).await?;
    record_slot(cluster, node.node_id, &node.host, node.port, &lsn).await
}

async fn record_slot(
    cluster: &Cluster,
    node_id: i32,
    host: &str,
    port: u16,
    lsn: &str,
) -> Result<(), ClusterError> {
    cluster
        .client()
        .execute(
            "INSERT INTO shoal.worker_slot (node_id, host, port, slot_name, frontier)
             VALUES ($1, $2, $3, $4, $5::text::pg_lsn)
             ON CONFLICT (node_id) DO UPDATE SET host = excluded.host, port = excluded.port",
            &[&node_id, &host, &i32::from(port), &SLOT_NAME, &lsn],
        )
        .await?;
    Ok(())
}

/// Drops a node's slot (if the node is reachable) and forgets it.
pub async fn forget_node_slot(
    cluster: &Cluster,
    node: Option<&Node>,
    node_id: i32,
) -> Result<(), ClusterError> {
    if let Some(node) = node {
        if let Ok(client) = cluster.node_client(node, "shoal capture").await {
            let _ = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE slot_name = $1 AND NOT active",
                    &[&SLOT_NAME],
                )
                .await;
        }
    }
    cluster
        .client()
        .execute(
            "DELETE FROM shoal.worker_slot WHERE node_id = $1",
            &[&node_id],
        )
        .await?;
    Ok(())
}
