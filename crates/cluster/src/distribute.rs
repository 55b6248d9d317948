//! Hash-distributed tables: `table distribute` and `table undistribute`.
//!
//! On the coordinator a distributed table is a table `PARTITION BY HASH (column)` whose
//! partitions are postgres_fdw foreign tables, one per shard, each pointing at the shard table
//! on the node that holds it. PostgreSQL then does the routing: partition pruning sends key
//! lookups to one node, and inserts are routed by the partition bounds.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::{GenericClient, Transaction};

use crate::cleanup::{begin_operation, end_operation, run_cleanup};
use crate::error::{ClusterError, PgContext};
use crate::layout;
use crate::locks;
use crate::placement::{place_in_group, place_new_group};
use crate::reference;
use crate::resolve::{resolve_column_name, resolve_relation};
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy, ColocationGroup, Node, TableKind};
use shoal_ddl::definition::{
    foreign_key_ddl, introspect, restore_ddl, shard_table_ddl, ConstraintKind, TableDef,
};
use shoal_sql::{derived_name, quote_ident, QualifiedName};

pub const DEFAULT_SHARD_COUNT: i32 = 32;
pub const MAX_SHARD_COUNT: i32 = 4096;

/// Which colocation group a newly distributed table joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Colocate {
    /// The default group for its shard count and column type (created if needed).
    Default,
    /// The group of this (already distributed) table.
    With(String),
    /// A new group of its own.
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistributeReport {
    pub table: QualifiedName,
    pub distribution_column: String,
    pub shard_count: i32,
    pub colocation_id: i32,
    pub rows_moved: u64,
    /// Shard id and node id of each shard index.
    pub shards: Vec<(i64, i32)>,
}

/// A planned shard: everything needed to create it, decided before anything is created.
#[derive(Debug, Clone)]
pub(crate) struct PlannedShard {
    pub index: i32,
    pub shard_id: i64,
    pub table: QualifiedName,
    pub node_id: i32,
}

/// Where each foreign key of a shard points, per shard index.
pub(crate) enum FkTarget {
    /// A reference table: the same name on every node.
    Reference(QualifiedName),
    /// A colocated table (or the table itself): the shard of the same index.
    Colocated(Vec<QualifiedName>),
}

pub async fn distribute_table(
    cluster: &Cluster,
    table: &str,
    column: &str,
    shard_count: Option<i32>,
    colocate: Colocate,
) -> Result<DistributeReport, ClusterError> {
    if let Some(count) = shard_count {
        if !(1..=MAX_SHARD_COUNT).contains(&count) {
            return Err(ClusterError::ShardCountOutOfRange(count.into()));
        }
    }
    let label = format!("shoal table distribute {table}");
    let mut coordinator = cluster.coordinator(&label).await?;
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
            "{} is not a plain table (relkind {}); only plain tables can be distributed",
            relation.name, relation.relkind
        )));
    }
    if model::find_group_of_kind(&tx, TableKind::Schema, Some(&relation.name.schema))
        .await?
        .is_some()
    {
        return Err(ClusterError::Unsupported(format!(
            "{} belongs to distributed schema {}; add it with `shoal schema sync {}`",
            relation.name,
            quote_ident(&relation.name.schema),
            quote_ident(&relation.name.schema)
        )));
    }
    // Readers and writers wait from here until the distributed table replaces this one.
    lock_table(&tx, &relation.name).await?;
    let def = introspect(&tx, relation.relid).await?;
    let column = resolve_column_name(&tx, column).await?;
    let column = column.as_str();
    let dist_column = def
        .column(column)
        .ok_or_else(|| ClusterError::UnknownColumn {
            table: def.name.to_string(),
            column: quote_ident(column),
            available: def
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let type_sql = dist_column.type_sql.clone();
    check_supported_columns(&def)?;
    check_hashable(&tx, column, &type_sql).await?;
    check_unique_constraints(&def, column)?;
    check_no_dependents(&tx, &def).await?;

    let (group, shard_count, group_is_new) =
        choose_group(&tx, &colocate, shard_count, &type_sql).await?;
    if let Some(group) = &group {
        locks::refuse_during_transfer(&tx, group.colocation_id).await?;
    }
    let nodes = model::list_nodes(&tx).await?;
    let placement = plan_placement(&tx, &group, shard_count, &nodes).await?;
    let fk_targets = foreign_key_targets(&tx, &def, column, &group, relation.relid).await?;

    let mut shards = Vec::with_capacity(placement.len());
    for (index, node_id) in placement.iter().enumerate() {
        let shard_id = model::next_shard_id(cluster.client()).await?;
        shards.push(PlannedShard {
            index: index as i32,
            shard_id,
            table: QualifiedName::new(
                &def.name.schema,
                derived_name(&def.name.name, &shard_id.to_string()),
            ),
            node_id: *node_id,
        });
    }
    // The own shard of each index is a valid target for a self-referencing foreign key.
    let own_shards: Vec<QualifiedName> = shards.iter().map(|s| s.table.clone()).collect();

    let operation_id = begin_operation(cluster).await?;
    let result = async {
        create_shards(
            cluster,
            &nodes,
            &def,
            &shards,
            &fk_targets,
            &own_shards,
            operation_id,
            &label,
        )
        .await?;
        let new_relid =
            swap_in_partitioned(&tx, &def, column, shard_count, &shards, &nodes).await?;
        let rows_moved = copy_rows(&tx, &def.name, &new_parent_name(&def)).await?;
        replace_table(&tx, &def, &new_parent_name(&def)).await?;
        for statement in layout::coordinator_index_ddl(&def, &def.name) {
            tx.batch_execute(&statement)
                .await
                .context(|| format!("creating {statement} on the coordinator"))?;
        }
        let group = if group_is_new {
            model::insert_group(
                &tx,
                TableKind::Hash,
                shard_count,
                Some(&type_sql),
                colocate == Colocate::Default,
                None,
            )
            .await?
        } else {
            group.clone().expect("an existing group")
        };
        let table_id = model::insert_table(
            &tx,
            new_relid,
            TableKind::Hash,
            Some(column),
            group.colocation_id,
            &serde_json::to_value(def.numbered_as_copy()).expect("table definitions serialise"),
        )
        .await?;
        for shard in &shards {
            model::insert_shard(&tx, shard.shard_id, table_id, shard.index, &shard.table).await?;
            model::insert_placement(&tx, shard.shard_id, shard.node_id).await?;
        }
        // Success and the forgetting of the on-failure records commit together.
        model::delete_cleanup_records(&tx, operation_id, CleanupPolicy::OnFailure).await?;
        Ok::<_, ClusterError>((rows_moved, group.colocation_id))
    }
    .await;
    let (rows_moved, colocation_id) = settle(
        cluster,
        operation_id,
        tx,
        result,
        &format!("distributing {}", def.name),
    )
    .await?;
    Ok(DistributeReport {
        table: def.name.clone(),
        distribution_column: column.to_string(),
        shard_count,
        colocation_id,
        rows_moved,
        shards: shards.iter().map(|s| (s.shard_id, s.node_id)).collect(),
    })
}

/// Ends an operation whose coordinator switch ran in `tx`: commits it if the switch succeeded,
/// else rolls it back and removes what the operation built on the nodes; then releases the
/// operation's lock.
pub(crate) async fn settle<T>(
    cluster: &Cluster,
    operation_id: i64,
    tx: Transaction<'_>,
    result: Result<T, ClusterError>,
    what: &str,
) -> Result<T, ClusterError> {
    let committed = match result {
        Ok(value) => tx
            .commit()
            .await
            .context(|| what.to_string())
            .map(|_| value),
        Err(error) => {
            let _ = tx.rollback().await;
            Err(error)
        }
    };
    let outcome = match committed {
        Ok(value) => Ok(value),
        Err(error) => Err(with_cleanup(cluster, operation_id, error).await),
    };
    end_operation(cluster, operation_id).await;
    outcome
}

/// Runs cleanup for a failed operation and says in the error what could not be removed.
pub(crate) async fn with_cleanup(
    cluster: &Cluster,
    operation_id: i64,
    error: ClusterError,
) -> ClusterError {
    match run_cleanup(cluster, Some(operation_id)).await {
        Ok(report) if report.is_clean() => error,
        Ok(report) => ClusterError::Unsupported(format!(
            "{error}; could not remove {} (run `shoal cleanup` once the node is back)",
            report.failed.join(", ")
        )),
        Err(cleanup_error) => ClusterError::Unsupported(format!(
            "{error}; cleanup failed too ({cleanup_error}): run `shoal cleanup`"
        )),
    }
}

pub(crate) async fn lock_table(
    tx: &Transaction<'_>,
    table: &QualifiedName,
) -> Result<(), ClusterError> {
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        table.quoted()
    ))
    .await
    .context(|| {
        format!(
            "locking {} (is a long transaction using it? try again when it ends)",
            table
        )
    })
}

pub(crate) fn check_supported_columns(def: &TableDef) -> Result<(), ClusterError> {
    for column in &def.columns {
        if column.identity {
            return Err(ClusterError::Unsupported(format!(
                "column {} of {} is an identity column, which partitioned tables do not support; \
                 use a sequence default (serial) instead",
                quote_ident(&column.name),
                def.name
            )));
        }
        if column.generated {
            return Err(ClusterError::Unsupported(format!(
                "column {} of {} is a generated column, which Shoal does not distribute yet",
                quote_ident(&column.name),
                def.name
            )));
        }
    }
    Ok(())
}

/// Asks PostgreSQL itself whether the type can be a hash partition key, in a savepoint that is
/// rolled back, so domains and array types are judged exactly as PostgreSQL would.
pub(crate) async fn check_hashable(
    tx: &Transaction<'_>,
    column: &str,
    type_sql: &str,
) -> Result<(), ClusterError> {
    tx.batch_execute("SAVEPOINT shoal_hash_probe").await?;
    let probe = tx
        .batch_execute(&format!(
            "CREATE TEMP TABLE shoal_hash_probe (k {type_sql}) PARTITION BY HASH (k)"
        ))
        .await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT shoal_hash_probe")
        .await?;
    probe.map_err(|_| ClusterError::NotHashable {
        column: quote_ident(column),
        type_name: type_sql.to_string(),
    })
}

/// Uniqueness can only be enforced inside one shard, so every unique key must contain the
/// distribution column.
fn check_unique_constraints(def: &TableDef, column: &str) -> Result<(), ClusterError> {
    for constraint in &def.constraints {
        let unique = matches!(
            constraint.kind,
            ConstraintKind::PrimaryKey | ConstraintKind::Unique
        );
        if unique && !constraint.columns.iter().any(|c| c == column) {
            return Err(ClusterError::Unsupported(format!(
                "constraint {} of {} does not include the distribution column {}, so it could not \
                 be enforced across shards; distribute by one of its columns",
                quote_ident(&constraint.name),
                def.name,
                quote_ident(column)
            )));
        }
    }
    for index in def.indexes.iter().filter(|i| i.unique) {
        if !index.key_columns.iter().any(|c| c == column) {
            return Err(ClusterError::Unsupported(format!(
                "unique index {} of {} does not include the distribution column {}; drop it or \
                 distribute by one of its columns",
                quote_ident(&index.name),
                def.name,
                quote_ident(column)
            )));
        }
    }
    Ok(())
}

/// The coordinator table is replaced by a new relation, so nothing may depend on it: no foreign
/// keys from other tables, no views.
pub(crate) async fn check_no_dependents(
    client: &impl GenericClient,
    def: &TableDef,
) -> Result<(), ClusterError> {
    let referencing = client
        .query(
            "SELECT conname::text, conrelid::regclass::text FROM pg_catalog.pg_constraint
             WHERE confrelid = $1 AND contype = 'f' AND conrelid <> $1",
            &[&def.relid],
        )
        .await?;
    if let Some(row) = referencing.first() {
        return Err(ClusterError::Unsupported(format!(
            "{} is referenced by foreign key {} of {}; drop that constraint first (distributed \
             tables may reference reference tables and colocated tables)",
            def.name,
            quote_ident(row.get::<_, &str>(0)),
            row.get::<_, &str>(1)
        )));
    }
    let views = client
        .query(
            "SELECT DISTINCT v.oid::regclass::text FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
             JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
             WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid = $1
               AND v.oid <> $1",
            &[&def.relid],
        )
        .await?;
    if !views.is_empty() {
        let names: Vec<String> = views.iter().map(|r| r.get(0)).collect();
        return Err(ClusterError::Unsupported(format!(
            "{} is used by view(s) {}; drop them first and create them again afterwards",
            def.name,
            names.join(", ")
        )));
    }
    Ok(())
}

/// Returns the group to join (None when a new one is to be created), and the shard count.
async fn choose_group(
    tx: &Transaction<'_>,
    colocate: &Colocate,
    shard_count: Option<i32>,
    type_sql: &str,
) -> Result<(Option<ColocationGroup>, i32, bool), ClusterError> {
    match colocate {
        Colocate::Default => {
            let count = shard_count.unwrap_or(DEFAULT_SHARD_COUNT);
            match model::find_default_group(tx, count, type_sql).await? {
                Some(group)
                    if !model::tables_in_group(tx, group.colocation_id)
                        .await?
                        .is_empty() =>
                {
                    Ok((Some(group), count, false))
                }
                Some(group) => {
                    // An empty default group (its tables were undistributed) is replaced.
                    model::delete_group_if_empty(tx, group.colocation_id).await?;
                    Ok((None, count, true))
                }
                None => Ok((None, count, true)),
            }
        }
        Colocate::None => Ok((None, shard_count.unwrap_or(DEFAULT_SHARD_COUNT), true)),
        Colocate::With(other) => {
            let relation = resolve_relation(tx, other).await?;
            let table = model::get_table_by_relid(tx, relation.relid)
                .await?
                .ok_or_else(|| ClusterError::NotDistributed(relation.name.to_string()))?;
            let mismatch = |reason: String| ClusterError::ColocationMismatch {
                other: table.name.to_string(),
                reason,
            };
            if table.kind != TableKind::Hash {
                return Err(mismatch(format!(
                    "it is a {} table; only hash-distributed tables form colocation groups",
                    table.kind.as_str()
                )));
            }
            let group = model::get_group(tx, table.colocation_id).await?;
            if let Some(count) = shard_count {
                if count != group.shard_count {
                    return Err(mismatch(format!(
                        "it has {} shards and {count} were asked for; omit --shards or use {}",
                        group.shard_count, group.shard_count
                    )));
                }
            }
            let group_type = group.distribution_type.clone().unwrap_or_default();
            if group_type != type_sql {
                return Err(mismatch(format!(
                    "it is distributed by a column of type {group_type}, this column has type {type_sql}"
                )));
            }
            let count = group.shard_count;
            Ok((Some(group), count, false))
        }
    }
}

async fn plan_placement(
    tx: &Transaction<'_>,
    group: &Option<ColocationGroup>,
    shard_count: i32,
    nodes: &[Node],
) -> Result<Vec<i32>, ClusterError> {
    if let Some(group) = group {
        let tables = model::tables_in_group(tx, group.colocation_id).await?;
        let mut pairs = Vec::new();
        for table in &tables {
            for p in model::placements_of_table(tx, table.table_id).await? {
                pairs.push((p.shard_index, p.node_id));
            }
        }
        return place_in_group(shard_count as usize, &pairs).ok_or_else(|| {
            ClusterError::Unsupported(format!(
                "the placements of colocation group {} are inconsistent; run `shoal shard list` to inspect them",
                group.colocation_id
            ))
        });
    }
    let candidates: Vec<i32> = nodes
        .iter()
        .filter(|n| n.accepts_shards())
        .map(|n| n.node_id)
        .collect();
    if candidates.is_empty() {
        return Err(ClusterError::NoNodes);
    }
    let load: BTreeMap<i32, i64> = model::shard_counts_by_node(tx).await?.into_iter().collect();
    Ok(place_new_group(shard_count as usize, &candidates, &load))
}

/// Foreign keys of a distributed table may point at reference tables (present on every node) or
/// at a colocated table through the distribution column (the matching shard is on the same node).
async fn foreign_key_targets(
    tx: &Transaction<'_>,
    def: &TableDef,
    column: &str,
    group: &Option<ColocationGroup>,
    relid: u32,
) -> Result<Vec<FkTarget>, ClusterError> {
    let mut targets = Vec::new();
    for (constraint, fk) in def.foreign_keys() {
        let refused = |why: &str| {
            ClusterError::Unsupported(format!(
                "foreign key {} of {} references {}, {why}; drop the constraint or {}",
                quote_ident(&constraint.name),
                def.name,
                fk.referenced,
                "make the referenced table a reference table first (`shoal table reference`)"
            ))
        };
        if fk.referenced_relid == relid {
            let position = fk.columns.iter().position(|c| c == column);
            if position.is_none()
                || position.map(|p| &fk.referenced_columns[p]) != Some(&column.to_string())
            {
                return Err(refused("itself, not through the distribution column"));
            }
            targets.push(FkTarget::Colocated(Vec::new()));
            continue;
        }
        let Some(target) = model::get_table_by_relid(tx, fk.referenced_relid).await? else {
            return Err(refused("a table that is not distributed"));
        };
        match target.kind {
            TableKind::Reference => targets.push(FkTarget::Reference(target.name.clone())),
            TableKind::Hash => {
                let same_group = group
                    .as_ref()
                    .is_some_and(|g| g.colocation_id == target.colocation_id);
                let through_key = fk
                    .columns
                    .iter()
                    .position(|c| c == column)
                    .is_some_and(|p| {
                        target.distribution_column.as_deref()
                            == Some(fk.referenced_columns[p].as_str())
                    });
                if !same_group || !through_key {
                    return Err(refused(
                        "a distributed table that is not colocated with it through the distribution column (use --colocate-with)",
                    ));
                }
                let shards = model::placements_of_table(tx, target.table_id).await?;
                let mut names: Vec<(i32, QualifiedName)> = shards
                    .into_iter()
                    .map(|p| (p.shard_index, p.shard_table))
                    .collect();
                names.sort();
                names.dedup();
                targets.push(FkTarget::Colocated(
                    names.into_iter().map(|(_, n)| n).collect(),
                ));
            }
            TableKind::Schema => return Err(refused("a table of a distributed schema")),
        }
    }
    Ok(targets)
}

/// Creates the shard tables on their nodes, node by node, each node's shards in one
/// transaction. A cleanup record is committed before each node is touched.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_shards(
    cluster: &Cluster,
    nodes: &[Node],
    def: &TableDef,
    shards: &[PlannedShard],
    fk_targets: &[FkTarget],
    own_shards: &[QualifiedName],
    operation_id: i64,
    label: &str,
) -> Result<(), ClusterError> {
    let mut by_node: BTreeMap<i32, Vec<&PlannedShard>> = BTreeMap::new();
    for shard in shards {
        by_node.entry(shard.node_id).or_default().push(shard);
    }
    let node_by_id: HashMap<i32, &Node> = nodes.iter().map(|n| (n.node_id, n)).collect();
    for (node_id, node_shards) in by_node {
        let node = node_by_id
            .get(&node_id)
            .ok_or_else(|| ClusterError::UnknownNode(node_id.to_string()))?;
        // Connect first: a record for a node never reached would only wait for cleanup.
        let client = cluster.node_client(node, label).await?;
        for shard in &node_shards {
            model::insert_cleanup_record(
                cluster.client(),
                operation_id,
                CleanupObject::ShardTable,
                Some(&shard.table.schema),
                &shard.table.name,
                node_id,
                CleanupPolicy::OnFailure,
            )
            .await?;
        }
        let mut ddl = vec!["BEGIN".to_string()];
        for shard in &node_shards {
            ddl.extend(shard_table_ddl(def, &shard.table, Some(shard.shard_id)));
        }
        for shard in &node_shards {
            for ((constraint, fk), target) in def.foreign_keys().zip(fk_targets) {
                let referenced = match target {
                    FkTarget::Reference(name) => name.clone(),
                    FkTarget::Colocated(names) if names.is_empty() => {
                        own_shards[shard.index as usize].clone()
                    }
                    FkTarget::Colocated(names) => names[shard.index as usize].clone(),
                };
                ddl.push(foreign_key_ddl(
                    &shard.table,
                    constraint,
                    fk,
                    &referenced,
                    Some(shard.shard_id),
                ));
            }
        }
        ddl.push("COMMIT".to_string());
        client
            .batch_execute(&ddl.join(";\n"))
            .await
            .context(|| format!("creating shards of {} on node {}", def.name, node.address()))?;
    }
    Ok(())
}

fn new_parent_name(def: &TableDef) -> QualifiedName {
    QualifiedName::new(&def.name.schema, format!("__shoal_new_{}", def.relid))
}

/// Creates the partitioned table (not yet under the table's name) and its foreign partitions.
async fn swap_in_partitioned(
    tx: &Transaction<'_>,
    def: &TableDef,
    column: &str,
    shard_count: i32,
    shards: &[PlannedShard],
    nodes: &[Node],
) -> Result<u32, ClusterError> {
    let parent = new_parent_name(def);
    let mut ddl = vec![format!(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
         INCLUDING COMMENTS) PARTITION BY HASH ({})",
        parent.quoted(),
        def.name.quoted(),
        quote_ident(column)
    )];
    for shard in shards {
        let node = nodes
            .iter()
            .find(|n| n.node_id == shard.node_id)
            .expect("planned on a known node");
        ddl.extend(layout::hash_shard_ddl(
            &parent,
            column,
            shard_count,
            shard.index,
            &shard.table,
            &node.fdw_server,
        ));
    }
    tx.batch_execute(&ddl.join(";\n"))
        .await
        .context(|| format!("creating the partitioned table for {}", def.name))?;
    let relid: u32 = tx
        .query_one("SELECT to_regclass($1)::oid", &[&parent.quoted()])
        .await?
        .get(0);
    Ok(relid)
}

pub(crate) async fn copy_rows(
    tx: &Transaction<'_>,
    from: &QualifiedName,
    to: &QualifiedName,
) -> Result<u64, ClusterError> {
    tx.execute(
        &format!(
            "INSERT INTO {} SELECT * FROM {}",
            to.quoted(),
            from.quoted()
        ),
        &[],
    )
    .await
    .context(|| format!("copying the rows of {from}"))
}

/// Replaces `def`'s table by `replacement` under the same name: sequences owned by its columns
/// move over (dropping the table would drop them), then the old table goes.
pub(crate) async fn replace_table(
    tx: &Transaction<'_>,
    def: &TableDef,
    replacement: &QualifiedName,
) -> Result<(), ClusterError> {
    move_owned_sequences(tx, def.relid, replacement).await?;
    tx.batch_execute(&format!(
        "DROP TABLE {};\nALTER TABLE {} RENAME TO {}",
        def.name.quoted(),
        replacement.quoted(),
        quote_ident(&def.name.name)
    ))
    .await
    .context(|| format!("replacing {}", def.name))
}

pub(crate) async fn move_owned_sequences(
    tx: &Transaction<'_>,
    relid: u32,
    replacement: &QualifiedName,
) -> Result<(), ClusterError> {
    let owned = tx
        .query(
            "SELECT quote_ident(sn.nspname) || '.' || quote_ident(s.relname), a.attname::text
             FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1
               AND d.deptype = 'a'",
            &[&relid],
        )
        .await?;
    for row in owned {
        let sequence: String = row.get(0);
        let column: String = row.get(1);
        tx.batch_execute(&format!(
            "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
            replacement.quoted(),
            quote_ident(&column)
        ))
        .await?;
    }
    Ok(())
}

/// Brings every row of a distributed table back into a plain coordinator table with its original
/// constraints and indexes, then removes the shards.
pub async fn undistribute_table(cluster: &Cluster, table: &str) -> Result<u64, ClusterError> {
    let relation = resolve_relation(cluster.client(), table).await?;
    let dist = model::get_table_by_relid(cluster.client(), relation.relid)
        .await?
        .ok_or_else(|| ClusterError::NotDistributed(relation.name.to_string()))?;
    match dist.kind {
        TableKind::Reference => {
            reference::unreference(cluster, dist.relid).await?;
            return Ok(0);
        }
        TableKind::Schema => {
            return Err(ClusterError::Unsupported(format!(
                "{} belongs to distributed schema {}; tables of a distributed schema stay with it",
                dist.name,
                quote_ident(&dist.name.schema)
            )))
        }
        TableKind::Hash => {}
    }
    let original: TableDef =
        serde_json::from_value(model::original_ddl(cluster.client(), dist.table_id).await?)
            .map_err(|e| {
                ClusterError::Unsupported(format!(
                    "the catalog's record of {} is unreadable: {e}",
                    dist.name
                ))
            })?;
    let placements = model::placements_of_table(cluster.client(), dist.table_id).await?;

    let operation_id = begin_operation(cluster).await?;
    let label = format!("shoal table undistribute {}", dist.name);
    let result = async {
        let mut coordinator = cluster.coordinator(&label).await?;
        let tx = coordinator.transaction().await?;
        locks::refuse_during_transfer(&tx, dist.colocation_id).await?;
        lock_table(&tx, &dist.name).await?;
        let local = QualifiedName::new(&dist.name.schema, format!("__shoal_local_{}", dist.relid));
        tx.batch_execute(&format!(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
             INCLUDING COMMENTS)",
            local.quoted(),
            dist.name.quoted()
        ))
        .await?;
        let rows = copy_rows(&tx, &dist.name, &local).await?;
        move_owned_sequences(&tx, dist.relid, &local).await?;
        tx.batch_execute(&format!(
            "DROP TABLE {};\nALTER TABLE {} RENAME TO {}",
            dist.name.quoted(),
            local.quoted(),
            quote_ident(&dist.name.name)
        ))
        .await?;
        let mut keep = HashMap::new();
        for (_, fk) in original.foreign_keys() {
            let target = match resolve_relation(&tx, &fk.referenced.quoted()).await {
                Ok(relation) => model::get_table_by_relid(&tx, relation.relid)
                    .await?
                    .is_none_or(|t| t.kind == TableKind::Reference),
                Err(_) => false,
            };
            keep.insert(fk.referenced.clone(), target);
        }
        for statement in restore_ddl(&original, &dist.name, |fk| {
            keep.get(&fk.referenced).copied().unwrap_or(false)
        }) {
            tx.batch_execute(&statement)
                .await
                .context(|| format!("restoring {statement}"))?;
        }
        for placement in &placements {
            model::insert_cleanup_record(
                &tx,
                operation_id,
                CleanupObject::ShardTable,
                Some(&placement.shard_table.schema),
                &placement.shard_table.name,
                placement.node_id,
                CleanupPolicy::DeferredOnSuccess,
            )
            .await?;
        }
        model::delete_table(&tx, dist.table_id).await?;
        model::delete_group_if_empty(&tx, dist.colocation_id).await?;
        tx.commit()
            .await
            .context(|| format!("undistributing {}", dist.name))?;
        Ok::<u64, ClusterError>(rows)
    }
    .await;
    if result.is_ok() {
        if let Ok(report) = run_cleanup(cluster, Some(operation_id)).await {
            for failure in report.failed {
                tracing::warn!(%failure, "shard left for `shoal cleanup`");
            }
        }
    }
    end_operation(cluster, operation_id).await;
    result
}
