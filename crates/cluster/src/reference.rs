//! Reference tables: authoritative on the coordinator, replicated to every node by logical
//! replication (one publication on the coordinator, one subscription per node), so shard tables
//! on any node can have foreign keys to them.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::cleanup::{begin_operation, end_operation, run_cleanup};
use crate::error::{ClusterError, PgContext};
use crate::locks;
use crate::privileges;
use crate::resolve::resolve_relation;
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy, Node, TableKind};
use shoal_ddl::definition::{
    foreign_key_ddl, has_replica_identity, introspect, shard_table_ddl, TableDef,
};
use shoal_sql::{quote_ident, quote_literal, QualifiedName};

pub const PUBLICATION: &str = "shoal_reference";

/// How long a node may take for the initial copy of a reference table.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

fn subscription_name(node: &Node) -> String {
    format!("shoal_reference_{}", node.node_id)
}

/// Makes a coordinator table a reference table: copies it to every node and keeps the copies in
/// sync. Returns the nodes it now lives on.
pub async fn reference_table(cluster: &Cluster, table: &str) -> Result<Vec<Node>, ClusterError> {
    let mut coordinator = cluster.coordinator("shoal table reference").await?;
    let wal_level: String = coordinator
        .query_one("SELECT current_setting('wal_level')", &[])
        .await?
        .get(0);
    if wal_level != "logical" {
        return Err(ClusterError::Unsupported(format!(
            "the coordinator has wal_level = {wal_level}; reference tables are replicated by logical \
             replication: set wal_level = logical on the coordinator and restart it"
        )));
    }
    let tx = coordinator.transaction().await?;
    let relation = resolve_relation(&tx, table).await?;
    if let Some(existing) = model::get_table_by_relid(&tx, relation.relid).await? {
        return Err(ClusterError::AlreadyDistributed {
            table: existing.name.to_string(),
            kind: existing.kind.as_str().to_string(),
        });
    }
    if relation.relkind != "r" {
        return Err(ClusterError::Unsupported(format!(
            "{} is not a plain table; only plain tables can become reference tables",
            relation.name
        )));
    }
    let def = introspect(&tx, relation.relid).await?;
    if !has_replica_identity(&def) {
        return Err(ClusterError::Unsupported(format!(
            "{} has no primary key, so its updates and deletes cannot be replicated; add a primary \
             key or run ALTER TABLE {} REPLICA IDENTITY FULL",
            def.name,
            def.name.quoted()
        )));
    }
    check_reference_foreign_keys(&tx, &def).await?;
    tx.rollback().await?;

    let nodes = model::list_nodes(cluster.client()).await?;
    for node in &nodes {
        if let Some(missing) = privileges::logical_replication_refused(cluster, None, node).await? {
            return Err(ClusterError::Unsupported(format!(
                "{} cannot become a reference table, which every node subscribes to: {missing}",
                def.name
            )));
        }
    }
    let operation_id = begin_operation(cluster).await?;
    let result = reference_table_op(cluster, &def, &nodes, operation_id).await;
    if result.is_err() {
        let _ = run_cleanup(cluster, Some(operation_id)).await;
    }
    end_operation(cluster, operation_id).await;
    result?;
    Ok(nodes)
}

async fn reference_table_op(
    cluster: &Cluster,
    def: &TableDef,
    nodes: &[Node],
    operation_id: i64,
) -> Result<(), ClusterError> {
    let mut clients = Vec::new();
    for node in nodes {
        let client = cluster
            .node_client(node, &format!("shoal reference {}", def.name))
            .await?;
        create_replica(cluster, node, &client, def, operation_id).await?;
        clients.push(client);
    }

    let mut coordinator = cluster.coordinator("shoal table reference").await?;
    let tx = coordinator.transaction().await?;
    tx.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", def.name.quoted()))
        .await?;
    let group = match model::find_group_of_kind(&tx, TableKind::Reference, None).await? {
        Some(group) => group,
        None => model::insert_group(&tx, TableKind::Reference, 1, None, false, None).await?,
    };
    let table_id = model::insert_table(
        &tx,
        def.relid,
        TableKind::Reference,
        None,
        group.colocation_id,
        &serde_json::to_value(def).expect("table definitions serialise"),
    )
    .await?;
    let shard_id = model::next_shard_id(&tx).await?;
    model::insert_shard(&tx, shard_id, table_id, 0, &def.name).await?;
    for node in nodes {
        model::insert_placement(&tx, shard_id, node.node_id).await?;
    }
    let publication_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&PUBLICATION],
        )
        .await?
        .get(0);
    let publish = if publication_exists {
        format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(PUBLICATION),
            def.name.quoted()
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(PUBLICATION),
            def.name.quoted()
        )
    };
    tx.batch_execute(&publish)
        .await
        .context(|| format!("publishing {}", def.name))?;
    model::delete_cleanup_records(&tx, operation_id, CleanupPolicy::OnFailure).await?;
    tx.commit()
        .await
        .context(|| format!("registering reference table {}", def.name))?;

    // The catalog says the table is replicated from here on: if a node cannot subscribe, the
    // whole reference is undone rather than left half-replicated.
    let subscribed = async {
        for (node, client) in nodes.iter().zip(&clients) {
            subscribe(cluster, node, client).await?;
        }
        for (node, client) in nodes.iter().zip(&clients) {
            wait_synced(node, client, std::slice::from_ref(&def.name)).await?;
            add_reference_foreign_keys(client, def).await?;
        }
        Ok::<(), ClusterError>(())
    }
    .await;
    if let Err(error) = subscribed {
        let _ = unreference(cluster, def.relid).await;
        return Err(error);
    }
    Ok(())
}

/// Reference tables may only reference other reference tables.
async fn check_reference_foreign_keys(
    client: &impl tokio_postgres::GenericClient,
    def: &TableDef,
) -> Result<(), ClusterError> {
    for (constraint, fk) in def.foreign_keys() {
        let target = model::get_table_by_relid(client, fk.referenced_relid).await?;
        if !target.is_some_and(|t| t.kind == TableKind::Reference) {
            return Err(ClusterError::Unsupported(format!(
                "foreign key {} of {} references {}, which is not a reference table; run `shoal table reference {}` first",
                quote_ident(&constraint.name),
                def.name,
                fk.referenced,
                fk.referenced
            )));
        }
    }
    Ok(())
}

pub async fn create_replica(
    cluster: &Cluster,
    node: &Node,
    client: &Client,
    def: &TableDef,
    operation_id: i64,
) -> Result<(), ClusterError> {
    model::insert_cleanup_record(
        cluster.client(),
        operation_id,
        CleanupObject::ShardTable,
        Some(&def.name.schema),
        &def.name.name,
        node.node_id,
        CleanupPolicy::OnFailure,
    )
    .await?;
    let ddl = shard_table_ddl(def, &def.name, None).join(";\n");
    client
        .batch_execute(&format!("BEGIN;\n{ddl};\nCOMMIT;"))
        .await
        .context(|| {
            format!(
                "creating a replica of {} on node {}",
                def.name,
                node.address()
            )
        })
}

pub async fn add_reference_foreign_keys(
    client: &Client,
    def: &TableDef,
) -> Result<(), ClusterError> {
    for (constraint, fk) in def.foreign_keys() {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint
                                WHERE conrelid = to_regclass($1) AND conname = $2)",
                &[&def.name.quoted(), &constraint.name],
            )
            .await?
            .get(0);
        if !exists {
            client
                .batch_execute(&foreign_key_ddl(
                    &def.name,
                    constraint,
                    fk,
                    &fk.referenced,
                    None,
                ))
                .await
                .context(|| format!("adding foreign key {} to a replica", constraint.name))?;
        }
    }
    Ok(())
}

/// Creates the node's subscription to the reference publication, or makes an existing one pick
/// up newly published tables. Must not run while this process holds a transaction open on the
/// coordinator: creating the slot there waits for every running transaction.
pub async fn subscribe(
    cluster: &Cluster,
    node: &Node,
    client: &Client,
) -> Result<(), ClusterError> {
    let name = subscription_name(node);
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&name],
        )
        .await?
        .get(0);
    let sql = if exists {
        format!(
            "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)",
            quote_ident(&name)
        )
    } else {
        format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}",
            quote_ident(&name),
            quote_literal(&cluster.params().libpq_string()),
            quote_ident(PUBLICATION)
        )
    };
    client.batch_execute(&sql).await.context(|| {
        format!(
            "subscribing node {} to the reference tables",
            node.address()
        )
    })
}

/// Waits until the node's subscription has finished the initial copy of `tables`.
pub async fn wait_synced(
    node: &Node,
    client: &Client,
    tables: &[QualifiedName],
) -> Result<(), ClusterError> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let started = Instant::now();
    loop {
        let ready: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_subscription_rel sr
                 JOIN pg_subscription s ON s.oid = sr.srsubid
                 WHERE s.subname = $1 AND sr.srsubstate = 'r'
                   AND sr.srrelid = ANY ($2::text[]::regclass[])",
                &[&subscription_name(node), &names],
            )
            .await?
            .get(0);
        if ready as usize >= tables.len() {
            return Ok(());
        }
        if started.elapsed() > SYNC_TIMEOUT {
            return Err(ClusterError::Unsupported(format!(
                "node {} did not finish copying the reference tables within {} s; check its log",
                node.address(),
                SYNC_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies every reference table to a newly added node and subscribes it.
pub async fn replicate_all_to_node(cluster: &Cluster, node: &Node) -> Result<(), ClusterError> {
    let tables: Vec<_> = model::list_tables(cluster.client())
        .await?
        .into_iter()
        .filter(|t| t.kind == TableKind::Reference)
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    let mut coordinator = cluster.coordinator("shoal node add").await?;
    // Held by this connection until it closes: DDL on reference tables waits for the node's
    // replicas to exist (it takes the group's lock exclusively), so none changes the tables
    // between their definitions being read here and the node subscribing.
    coordinator
        .execute(
            "SELECT pg_advisory_lock_shared($1)",
            &[&locks::colocation_key(tables[0].colocation_id)],
        )
        .await?;
    let mut defs = Vec::new();
    {
        let tx = coordinator.transaction().await?;
        for table in &tables {
            defs.push(introspect(&tx, table.relid).await?);
        }
        tx.rollback().await?;
    }
    let client = cluster.node_client(node, "shoal node add").await?;
    let operation_id = begin_operation(cluster).await?;
    let result = async {
        for def in &defs {
            create_replica(cluster, node, &client, def, operation_id).await?;
        }
        subscribe(cluster, node, &client).await?;
        let names: Vec<QualifiedName> = defs.iter().map(|d| d.name.clone()).collect();
        wait_synced(node, &client, &names).await?;
        for def in &defs {
            add_reference_foreign_keys(&client, def).await?;
        }
        let tx = coordinator.transaction().await?;
        for table in &tables {
            for placement in model::placements_of_table(&tx, table.table_id).await? {
                model::insert_placement(&tx, placement.shard_id, node.node_id).await?;
            }
        }
        model::delete_cleanup_records(&tx, operation_id, CleanupPolicy::OnFailure).await?;
        tx.commit().await?;
        Ok::<(), ClusterError>(())
    }
    .await;
    if result.is_err() {
        let _ = client
            .batch_execute(&format!(
                "DROP SUBSCRIPTION IF EXISTS {}",
                quote_ident(&subscription_name(node))
            ))
            .await;
        let _ = run_cleanup(cluster, Some(operation_id)).await;
    }
    end_operation(cluster, operation_id).await;
    result
}

/// Stops replicating reference tables to a node that leaves the cluster and removes its
/// replicas. An unreachable node keeps its copies, but the coordinator's slot for it is dropped so
/// the coordinator does not keep WAL for it forever.
pub async fn detach_node(cluster: &Cluster, node: &Node) -> Result<(), ClusterError> {
    let name = subscription_name(node);
    let tables: Vec<_> = model::list_tables(cluster.client())
        .await?
        .into_iter()
        .filter(|t| t.kind == TableKind::Reference)
        .collect();
    match cluster.node_client(node, "shoal node remove").await {
        Ok(client) => {
            client
                .batch_execute(&format!(
                    "DROP SUBSCRIPTION IF EXISTS {}",
                    quote_ident(&name)
                ))
                .await
                .context(|| format!("dropping the subscription on node {}", node.address()))?;
            for table in tables.iter().rev() {
                client
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {} CASCADE",
                        table.name.quoted()
                    ))
                    .await
                    .context(|| format!("dropping the replica of {}", table.name))?;
            }
        }
        Err(error) => {
            tracing::warn!(node = node.node_id, %error, "node unreachable; leaving its replicas");
        }
    }
    cluster
        .client()
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1 AND NOT active",
            &[&name],
        )
        .await
        .context(|| "dropping the coordinator's replication slot for the node".to_string())?;
    Ok(())
}

/// Turns a reference table back into a plain coordinator table: unpublishes it and removes the
/// replicas. Refused while a distributed table's shards have foreign keys to it.
pub async fn unreference(cluster: &Cluster, relid: u32) -> Result<(), ClusterError> {
    let Some(table) = model::get_table_by_relid(cluster.client(), relid).await? else {
        return Ok(());
    };
    for other in model::list_tables(cluster.client()).await? {
        if other.table_id == table.table_id {
            continue;
        }
        let ddl = model::original_ddl(cluster.client(), other.table_id).await?;
        let def: TableDef = match serde_json::from_value(ddl) {
            Ok(def) => def,
            Err(_) => continue,
        };
        if def
            .foreign_keys()
            .any(|(_, fk)| fk.referenced == table.name)
        {
            return Err(ClusterError::Unsupported(format!(
                "{} has a foreign key to {}; undistribute {} first",
                other.name, table.name, other.name
            )));
        }
    }
    let placements = model::placements_of_table(cluster.client(), table.table_id).await?;
    let operation_id = begin_operation(cluster).await?;
    let result = async {
        let mut coordinator = cluster.coordinator("shoal table undistribute").await?;
        let tx = coordinator.transaction().await?;
        let published: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                                WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
                &[&PUBLICATION, &table.name.schema, &table.name.name],
            )
            .await?
            .get(0);
        if published {
            tx.batch_execute(&format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(PUBLICATION),
                table.name.quoted()
            ))
            .await?;
        }
        for placement in &placements {
            model::insert_cleanup_record(
                &tx,
                operation_id,
                CleanupObject::ShardTable,
                Some(&table.name.schema),
                &table.name.name,
                placement.node_id,
                CleanupPolicy::DeferredOnSuccess,
            )
            .await?;
        }
        model::delete_table(&tx, table.table_id).await?;
        model::delete_group_if_empty(&tx, table.colocation_id).await?;
        tx.commit().await?;
        // Let each subscription forget the table before its replica is dropped.
        for node in model::list_nodes(cluster.client()).await? {
            if let Ok(client) = cluster.node_client(&node, "shoal table undistribute").await {
                let _ = client
                    .batch_execute(&format!(
                        "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = false)",
                        quote_ident(&subscription_name(&node))
                    ))
                    .await;
            }
        }
        Ok::<(), ClusterError>(())
    }
    .await;
    let _ = run_cleanup(cluster, Some(operation_id)).await;
    end_operation(cluster, operation_id).await;
    result
}
