//! `shoal ddl`: runs a script of DDL against the cluster. Statements the coordinator takes run
//! there (its event triggers carry them to the shards); the ones it refuses on a distributed
//! table are planned by [`crate::statement`] and run on the shards by this module, with the
//! catalog's record of the table updated in the same coordinator transaction. A
//! `CONCURRENTLY` statement must be alone in its script, as in PostgreSQL: it is built shard by
//! shard on the nodes, outside any transaction, and recorded afterwards.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::definition::TableDef;
use crate::error::{Context, DdlError};
use crate::record::changed_record;
use crate::statement::{self, Managed, NamedRelation, Route, Shard, ShardWork};
use shoal_catalog::model::{self, TableKind};
use shoal_catalog::ConnectParams;
use shoal_sql::{derived_name, quote_ident, QualifiedName};

/// What happened to one statement of a script.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub statement: String,
    /// `coordinator` (propagated by its triggers), `shards`, or `shards concurrently`.
    pub route: &'static str,
    /// Shards that ran their own statement (0 for the coordinator's route).
    pub shards: usize,
    /// Run in a transaction that has not ended yet.
    #[serde(skip)]
    pending: bool,
}

impl Applied {
    fn new(statement: &str, route: &'static str, shards: usize) -> Applied {
        Applied {
            statement: statement.to_string(),
            route,
            shards,
            pending: true,
        }
    }
}

/// Runs `sql` (one or more statements) as psql would run the script: the statements between
/// the script's own BEGIN and COMMIT in one transaction, and the statements outside any block
/// together in one transaction (so a script without blocks takes effect whole or not at all).
/// A `CONCURRENTLY` statement runs on its own, outside any transaction, and is undone on
/// failure. Stops at the first failure; what committed before it stays.
pub async fn apply(
    params: &ConnectParams,
    client: &mut Client,
    sql: &str,
) -> Result<Vec<Applied>, DdlError> {
    let statements = statement::parse(sql).map_err(DdlError::Refused)?;
    if statements.is_empty() {
        return Err(refusal("no statement to run"));
    }
    let mut script = Script {
        out: Vec::new(),
        open: false,
        explicit: false,
        by_hand: !triggers_installed(&*client).await?,
    };
    let result = script.run(params, client, &statements).await;
    if result.is_err() && script.open {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result.map(|()| script.out)
}

/// A script being run: its transaction is managed with plain BEGIN/COMMIT on the client, so a
/// CONCURRENTLY statement can run on the same connection between transactions.
struct Script {
    out: Vec<Applied>,
    /// A transaction is open.
    open: bool,
    /// It was opened by the script's own BEGIN.
    explicit: bool,
    /// The coordinator's event triggers are not installed: what it takes is carried to the
    /// shards here, with the same functions the triggers would call.
    by_hand: bool,
}

impl Script {
    async fn run(
        &mut self,
        params: &ConnectParams,
        client: &mut Client,
        statements: &[statement::Parsed],
    ) -> Result<(), DdlError> {
        for parsed in statements {
            match statement::transaction_control(&parsed.node) {
                Some(statement::Control::Begin) => {
                    if self.explicit {
                        return Err(refusal("BEGIN inside a transaction block"));
                    }
                    self.commit(client).await?;
                    self.explicit = true;
                    continue;
                }
                Some(statement::Control::Commit) => {
                    self.commit(client).await?;
                    continue;
                }
                Some(statement::Control::Rollback) => {
                    if self.open {
                        client
                            .batch_execute("ROLLBACK")
                            .await
                            .context(|| "rolling back the script's transaction".into())?;
                        self.open = false;
                    }
                    self.out.retain(|a| !a.pending);
                    self.explicit = false;
                    continue;
                }
                Some(statement::Control::Other) => {
                    return Err(refusal(&format!(
                        "{}: savepoints and prepared transactions are not supported in a script",
                        parsed.text
                    )))
                }
                None => {}
            }
            if !self.open {
                // Statements the coordinator takes are propagated by its event triggers.
                client
                    .batch_execute("BEGIN; SET LOCAL shoal.manage_ddl = on")
                    .await
                    .context(|| "starting the DDL transaction".into())?;
                self.open = true;
            }
            match plan(&*client, &parsed.node).await? {
                Route::Coordinator if self.by_hand => {
                    propagate_by_hand(&*client, parsed).await?;
                    self.out.push(Applied::new(&parsed.text, "coordinator", 0));
                }
                Route::Coordinator => {
                    client
                        .batch_execute(&parsed.text)
                        .await
                        .context(|| parsed.text.clone())?;
                    self.out.push(Applied::new(&parsed.text, "coordinator", 0));
                }
                Route::Shards(work) => {
                    on_shards(&*client, &parsed.text, &work).await?;
                    self.out
                        .push(Applied::new(&parsed.text, "shards", work.statements.len()));
                }
                Route::Retype(retype) => {
                    retype_column(&*client, &parsed.text, &retype).await?;
                    self.out.push(Applied::new(
                        &parsed.text,
                        "shards",
                        retype.statements.len(),
                    ));
                }
                Route::Concurrently(work) => {
                    if self.explicit {
                        return Err(refusal(&format!(
                            "{} cannot run inside a transaction block",
                            parsed.text
                        )));
                    }
                    // What came before it commits first, as PostgreSQL would require.
                    self.commit(client).await?;
                    self.out
                        .extend(concurrently(params, client, &parsed.text, &work).await?);
                }
            }
        }
        if self.explicit {
            return Err(refusal(
                "the script ends inside a transaction block (BEGIN without COMMIT); it was rolled back",
            ));
        }
        self.commit(client).await
    }

    /// Commits the open transaction, if any: what ran in it has taken effect.
    async fn commit(&mut self, client: &Client) -> Result<(), DdlError> {
        if self.open {
            client
                .batch_execute("COMMIT")
                .await
                .context(|| "committing the DDL".into())?;
            self.open = false;
        }
        self.explicit = false;
        for applied in &mut self.out {
            applied.pending = false;
        }
        Ok(())
    }
}

/// Whether the coordinator's DDL event triggers are installed and enabled.
async fn triggers_installed(client: &impl GenericClient) -> Result<bool, DdlError> {
    Ok(client
        .query_one(
            "SELECT count(*) = 3 FROM pg_catalog.pg_event_trigger
             WHERE evtname IN ('shoal_ddl_command_start', 'shoal_ddl_command_end', 'shoal_sql_drop')
               AND evtenabled <> 'D'",
            &[],
        )
        .await
        .context(|| "looking for the DDL event triggers".into())?
        .get(0))
}

/// Runs a statement the coordinator takes and does what its event triggers would have done:
/// the managed tables it changes reconciled with their shards afterwards, the ones it drops
/// removed from the nodes first, a table it creates in a distributed schema placed with it.
async fn propagate_by_hand(
    client: &impl GenericClient,
    parsed: &statement::Parsed,
) -> Result<(), DdlError> {
    let changes = statement::changes(&parsed.node);
    let what = || parsed.text.clone();
    let mut changed = Vec::new();
    for relation in &changes.relations {
        if let Some(relid) = relid_of(client, relation).await? {
            // Raises for a shard's own partition or foreign table, as the triggers would.
            let table: Option<i32> = client
                .query_one("SELECT shoal.ddl_managed_table($1)", &[&relid])
                .await
                .context(what)?
                .get(0);
            changed.extend(table);
        }
    }
    let mut dropped: Vec<i32> = Vec::new();
    for relation in &changes.dropped_tables {
        if let Some(relid) = relid_of(client, relation).await? {
            let table: Option<i32> = client
                .query_one("SELECT shoal.ddl_managed_table($1)", &[&relid])
                .await
                .context(what)?
                .get(0);
            dropped.extend(table);
        }
    }
    for schema in &changes.dropped_schemas {
        let in_schema: Vec<i32> = client
            .query(
                "SELECT t.table_id FROM shoal.distributed_table t
                 JOIN pg_catalog.pg_class c ON c.oid = t.relid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
                &[schema],
            )
            .await
            .context(what)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        dropped.extend(in_schema);
    }
    if !dropped.is_empty() || !changes.dropped_schemas.is_empty() {
        client
            .execute(
                "SELECT shoal.ddl_drop_tables($1, $2)",
                &[&dropped, &changes.dropped_schemas],
            )
            .await
            .context(what)?;
    }
    client.batch_execute(&parsed.text).await.context(what)?;
    for table in changed {
        client
            .execute(
                "SELECT shoal.ddl_reconcile($1, 'shoal ddl')
                 WHERE EXISTS (SELECT 1 FROM shoal.distributed_table WHERE table_id = $1)",
                &[&table],
            )
            .await
            .context(what)?;
    }
    if let Some(created) = &changes.created_table {
        if let Some(relid) = relid_of(client, created).await? {
            client
                .execute(
                    "SELECT shoal.ddl_place_in_schema(c.oid, g.colocation_id)
                     FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     JOIN shoal.colocation_group g ON g.kind = 'schema' AND g.schema_name = n.nspname
                     WHERE c.oid = $1 AND NOT c.relispartition
                       AND NOT EXISTS (SELECT 1 FROM shoal.distributed_table t WHERE t.relid = c.oid)",
                    &[&relid],
                )
                .await
                .context(what)?;
        }
    }
    Ok(())
}

async fn relid_of(
    client: &impl GenericClient,
    relation: &NamedRelation,
) -> Result<Option<u32>, DdlError> {
    Ok(client
        .query_one("SELECT to_regclass($1)::oid", &[&relation.sql()])
        .await
        .context(|| format!("looking up {}", relation.sql()))?
        .get(0))
}

fn refusal(text: &str) -> DdlError {
    DdlError::Refused(statement::Refusal(text.to_string()))
}

/// Resolves what a statement names and plans it.
async fn plan(client: &impl GenericClient, node: &pg_query::NodeEnum) -> Result<Route, DdlError> {
    let names = statement::names(node);
    let mut tables = Vec::new();
    for name in &names.tables {
        tables.push(managed_by_name(client, name).await?);
    }
    let mut dropped = Vec::new();
    for index in &names.indexes {
        if let Some(found) = managed_index(client, index).await? {
            dropped.push(found);
        }
    }
    let table = tables.first().and_then(Option::as_ref);
    let referenced = tables.get(1).and_then(Option::as_ref);
    statement::route(node, table, referenced, &dropped).map_err(DdlError::Refused)
}

async fn managed_by_name(
    client: &impl GenericClient,
    name: &NamedRelation,
) -> Result<Option<Managed>, DdlError> {
    let relid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&name.sql()])
        .await
        .context(|| format!("looking up {}", name.sql()))?
        .get(0);
    match relid {
        Some(relid) => load_managed(client, relid).await,
        None => Ok(None),
    }
}

pub(crate) async fn load_managed(
    client: &impl GenericClient,
    relid: u32,
) -> Result<Option<Managed>, DdlError> {
    let what = || format!("reading the catalog's record of relation {relid}");
    let Some(table) = model::get_table_by_relid(client, relid)
        .await
        .map_err(|e| catalog_error(e, what()))?
    else {
        return Ok(None);
    };
    let record: TableDef = serde_json::from_value(
        model::original_ddl(client, table.table_id)
            .await
            .map_err(|e| catalog_error(e, what()))?,
    )
    .map_err(|e| DdlError::Unreadable {
        what: format!("the catalog's record of {}", table.name),
        reason: e.to_string(),
    })?;
    let mut shards: Vec<Shard> = model::placements_of_table(client, table.table_id)
        .await
        .map_err(|e| catalog_error(e, what()))?
        .into_iter()
        .map(|p| Shard {
            shard_id: p.shard_id,
            index: p.shard_index,
            table: p.shard_table,
            node_id: p.node_id,
        })
        .collect();
    if table.kind == TableKind::Reference {
        shards.clear();
    }
    Ok(Some(Managed {
        table_id: table.table_id,
        relid,
        kind: table.kind,
        colocation_id: table.colocation_id,
        name: table.name,
        distribution_column: table.distribution_column,
        record,
        shards,
    }))
}

fn catalog_error(error: shoal_catalog::CatalogError, what: String) -> DdlError {
    DdlError::Catalog {
        what,
        message: error.to_string(),
    }
}

/// An index a DROP INDEX names, if it belongs to a managed table: a plain one is a
/// coordinator relation; a unique one exists on the shards only, so it is looked up in the
/// records of the tables in the schemas the name can mean.
async fn managed_index(
    client: &impl GenericClient,
    index: &NamedRelation,
) -> Result<Option<(Managed, String)>, DdlError> {
    let what = || format!("looking up index {}", index.sql());
    let on_coordinator: Option<u32> = client
        .query_opt(
            "SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = to_regclass($1)",
            &[&index.sql()],
        )
        .await
        .context(what)?
        .map(|row| row.get(0));
    if let Some(relid) = on_coordinator {
        return Ok(load_managed(client, relid)
            .await?
            .map(|table| (table, index.name.clone())));
    }
    let schemas: Vec<String> = match &index.schema {
        Some(schema) => vec![schema.clone()],
        None => client
            .query_one("SELECT current_schemas(false)::text[]", &[])
            .await
            .context(what)?
            .get(0),
    };
    for schema in schemas {
        let relid: Option<u32> = client
            .query_opt(
                "SELECT t.relid FROM shoal.distributed_table t
                 WHERE t.original_ddl->'name'->>'schema' = $1
                   AND EXISTS (SELECT 1 FROM jsonb_array_elements(t.original_ddl->'indexes') i
                                WHERE i.value->>'name' = $2)",
                &[&schema, &index.name],
            )
            .await
            .context(what)?
            .map(|row| row.get(0));
        if let Some(relid) = relid {
            return Ok(load_managed(client, relid)
                .await?
                .map(|table| (table, index.name.clone())));
        }
    }
    Ok(None)
}

fn by_node(statements: &[(Shard, String)]) -> BTreeMap<i32, Vec<&(Shard, String)>> {
    let mut out: BTreeMap<i32, Vec<&(Shard, String)>> = BTreeMap::new();
    for item in statements {
        out.entry(item.0.node_id).or_default().push(item);
    }
    out
}

/// A shard-only change inside the coordinator's transaction: the table locked as a plain
/// ALTER TABLE would lock it, the statements sent through each node's inbox (so they commit
/// with this transaction), and the record rewritten from a shard that has the change.
async fn on_shards(tx: &impl GenericClient, text: &str, work: &ShardWork) -> Result<(), DdlError> {
    for statement in &work.coordinator_before {
        tx.batch_execute(statement)
            .await
            .context(|| format!("{statement} on the coordinator"))?;
    }
    // Read after the coordinator's part, which its triggers recorded.
    let table = table_of(tx, work.table_id).await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        table.name.quoted()
    ))
    .await
    .context(|| format!("locking {} (is a long transaction using it?)", table.name))?;
    refuse_during_transfer(tx, &table).await?;
    let first = work.statements.first().map(|(shard, _)| shard.clone());
    let mut readback = None;
    for (node_id, items) in by_node(&work.statements) {
        let statements: Vec<String> = items.iter().map(|(_, s)| s.clone()).collect();
        let describe = first
            .as_ref()
            .filter(|shard| shard.node_id == node_id)
            .map(|shard| shard.table.quoted());
        let result: Option<serde_json::Value> = tx
            .query_one(
                "SELECT shoal.ddl_send($1, $2, $3)",
                &[&node_id, &statements, &describe],
            )
            .await
            .context(|| text.to_string())?
            .get(0);
        if describe.is_some() {
            readback = result;
        }
    }
    record(tx, &table, text, work, readback, first.as_ref()).await
}

/// ALTER COLUMN ... TYPE ... USING: the shards convert their rows with the expression (through
/// the inboxes, in this transaction); on the coordinator the foreign tables are detached while
/// the partitioned tables take the new type with the same statement (PostgreSQL refuses USING
/// over foreign tables), given it themselves (a foreign table's type holds no rows), and
/// attached again. The record then follows through the coordinator's own reconciler.
async fn retype_column(
    client: &impl GenericClient,
    text: &str,
    retype: &statement::Retype,
) -> Result<(), DdlError> {
    let table = table_of(client, retype.table_id).await?;
    client
        .batch_execute(&format!(
            "SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            table.name.quoted()
        ))
        .await
        .context(|| format!("locking {} (is a long transaction using it?)", table.name))?;
    refuse_during_transfer(client, &table).await?;
    for (node_id, items) in by_node(&retype.statements) {
        let statements: Vec<String> = items.iter().map(|(_, s)| s.clone()).collect();
        let describe: Option<String> = None;
        client
            .execute(
                "SELECT shoal.ddl_send($1, $2, $3)",
                &[&node_id, &statements, &describe],
            )
            .await
            .context(|| text.to_string())?;
    }
    let layout: Vec<(String, String)> = retype
        .statements
        .iter()
        .map(|(shard, _)| {
            let partition = match table.kind {
                TableKind::Schema => table.name.quoted(),
                _ => QualifiedName::new(
                    &shard.table.schema,
                    derived_name(&shard.table.name, "shard"),
                )
                .quoted(),
            };
            (partition, shard.table.quoted())
        })
        .collect();
    let mut coordinator = vec!["SET LOCAL shoal.manage_ddl = off".to_string()];
    for (partition, foreign) in &layout {
        coordinator.push(format!(
            "ALTER TABLE {partition} DETACH PARTITION {foreign}"
        ));
    }
    coordinator.push(text.to_string());
    client
        .batch_execute(&coordinator.join(";\n"))
        .await
        .context(|| format!("{text} on the coordinator"))?;
    let new_type: String = client
        .query_one(
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                            THEN ' COLLATE ' || a.attcollation::regcollation::text ELSE '' END
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = $1 AND a.attname = $2",
            &[&table.relid, &retype.column],
        )
        .await
        .context(|| format!("reading the new type of {}", retype.column))?
        .get(0);
    let mut coordinator = Vec::new();
    for (partition, foreign) in &layout {
        coordinator.push(format!(
            "ALTER FOREIGN TABLE {foreign} ALTER COLUMN {} TYPE {new_type}",
            quote_ident(&retype.column)
        ));
        coordinator.push(format!(
            "ALTER TABLE {partition} ATTACH PARTITION {foreign} FOR VALUES WITH (MODULUS 1, REMAINDER 0)"
        ));
    }
    coordinator.push("SET LOCAL shoal.manage_ddl = on".to_string());
    client
        .batch_execute(&coordinator.join(";\n"))
        .await
        .context(|| format!("{text} on the coordinator"))?;
    client
        .execute(
            "SELECT shoal.ddl_reconcile($1, 'ALTER TABLE')",
            &[&table.table_id],
        )
        .await
        .context(|| format!("recording {text}"))?;
    Ok(())
}

async fn table_of(client: &impl GenericClient, table_id: i32) -> Result<Managed, DdlError> {
    let relid: u32 = client
        .query_one(
            "SELECT relid FROM shoal.distributed_table WHERE table_id = $1",
            &[&table_id],
        )
        .await
        .context(|| format!("reading distributed table {table_id}"))?
        .get(0);
    load_managed(client, relid).await?.ok_or_else(|| {
        DdlError::Refused(statement::Refusal(format!(
            "table {table_id} is no longer distributed"
        )))
    })
}

async fn refuse_during_transfer(
    client: &impl GenericClient,
    table: &Managed,
) -> Result<(), DdlError> {
    let free: bool = client
        .query_one(
            "SELECT pg_try_advisory_xact_lock(shoal.colocation_lock_key($1))",
            &[&table.colocation_id],
        )
        .await
        .context(|| "checking for shard moves".into())?
        .get(0);
    if free {
        Ok(())
    } else {
        Err(DdlError::Refused(statement::Refusal(format!(
            "a shard of {} is being moved, so its definition cannot change now; wait for the \
             move to finish (SELECT * FROM shoal.rebalance_progress) or cancel it, then run the \
             statement again",
            table.name
        ))))
    }
}

/// Writes the record of a shard-only change and its history row.
async fn record(
    client: &impl GenericClient,
    table: &Managed,
    text: &str,
    work: &ShardWork,
    readback: Option<serde_json::Value>,
    first: Option<&Shard>,
) -> Result<(), DdlError> {
    let readback: Option<TableDef> =
        readback
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| DdlError::Unreadable {
                what: "a shard's definition".into(),
                reason: e.to_string(),
            })?;
    let updated = changed_record(
        &table.record,
        &work.change,
        readback.as_ref(),
        first.map_or(0, |s| s.shard_id),
    )
    .map_err(DdlError::Refused)?;
    let json = serde_json::to_value(&updated).expect("table definitions serialise");
    client
        .execute(
            "UPDATE shoal.distributed_table SET original_ddl = $2 WHERE table_id = $1",
            &[&table.table_id, &json],
        )
        .await
        .context(|| format!("recording the change of {}", table.name))?;
    client
        .execute(
            "INSERT INTO shoal.ddl_change (table_id, command_tag, operations)
             VALUES ($1, 'shoal ddl', jsonb_build_object('statement', $2::text, 'shards', $3::int))",
            &[
                &table.table_id,
                &text,
                &(work.statements.len() as i32),
            ],
        )
        .await
        .context(|| format!("recording the change of {}", table.name))?;
    Ok(())
}

/// A `CONCURRENTLY` statement: every node builds (or drops) its shards' indexes without
/// blocking writes, all nodes at once; on failure what was built is dropped again. Then the
/// coordinator's part and the record, in one transaction. Moves of the table's shards wait
/// until it is done (the colocation group's lock, held for the whole build).
async fn concurrently(
    params: &ConnectParams,
    client: &mut Client,
    text: &str,
    work: &ShardWork,
) -> Result<Vec<Applied>, DdlError> {
    let table = table_of(&*client, work.table_id).await?;
    let key: i64 = client
        .query_one(
            "SELECT shoal.colocation_lock_key($1)",
            &[&table.colocation_id],
        )
        .await
        .context(|| "checking for shard moves".into())?
        .get(0);
    let free: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .context(|| "checking for shard moves".into())?
        .get(0);
    if !free {
        return Err(DdlError::Refused(statement::Refusal(format!(
            "a shard of {} is being moved; wait for the move to finish (SELECT * FROM \
             shoal.rebalance_progress), then run the statement again",
            table.name
        ))));
    }
    let result = build_and_record(params, client, text, work, &table).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    result
}

async fn build_and_record(
    params: &ConnectParams,
    client: &mut Client,
    text: &str,
    work: &ShardWork,
    table: &Managed,
) -> Result<Vec<Applied>, DdlError> {
    let nodes: BTreeMap<i32, model::Node> = model::list_nodes(&*client)
        .await
        .map_err(|e| catalog_error(e, "reading the nodes".into()))?
        .into_iter()
        .map(|n| (n.node_id, n))
        .collect();
    let mut clients = BTreeMap::new();
    for node_id in by_node(&work.statements).keys() {
        let node = nodes.get(node_id).ok_or_else(|| {
            DdlError::Refused(statement::Refusal(format!(
                "node {node_id} holds shards of {} but is not registered",
                table.name
            )))
        })?;
        let node_params = params.with_target(&node.host, node.port, &node.dbname);
        let node_client = shoal_catalog::connect(&node_params, "shoal ddl")
            .await
            .map_err(|e| catalog_error(e, format!("connecting to node {node_id}")))?;
        clients.insert(*node_id, node_client);
    }
    let builds = by_node(&work.statements)
        .into_iter()
        .map(|(node_id, items)| {
            let node_client = &clients[&node_id];
            async move {
                for (shard, statement) in items {
                    node_client.batch_execute(statement).await.context(|| {
                        format!("{text} on shard {} (node {node_id})", shard.shard_id)
                    })?;
                }
                Ok::<(), DdlError>(())
            }
        });
    let built = futures_util::future::join_all(builds).await;
    if let Some(error) = built.into_iter().find_map(Result::err) {
        for (shard, undo) in &work.undo {
            if let Some(node_client) = clients.get(&shard.node_id) {
                if let Err(e) = node_client.batch_execute(undo).await {
                    tracing::warn!(shard = shard.shard_id, error = %e, "could not undo a concurrent build");
                }
            }
        }
        return Err(error);
    }
    let first = work.statements.first().map(|(shard, _)| shard.clone());
    let mut readback = None;
    if let Some(shard) = &first {
        readback = clients[&shard.node_id]
            .query_one(
                "SELECT shoal_worker.describe_table(to_regclass($1))",
                &[&shard.table.quoted()],
            )
            .await
            .context(|| format!("reading shard {}", shard.shard_id))?
            .get::<_, Option<serde_json::Value>>(0);
    }
    let tx = client
        .transaction()
        .await
        .context(|| "recording the DDL".into())?;
    tx.batch_execute("SET LOCAL shoal.manage_ddl = on")
        .await
        .context(|| "recording the DDL".into())?;
    if let Some(coordinator) = &work.coordinator_after {
        tx.batch_execute(coordinator)
            .await
            .context(|| format!("{coordinator} on the coordinator"))?;
    }
    if work.change != statement::RecordChange::ByCoordinator {
        record(&tx, table, text, work, readback, first.as_ref()).await?;
    }
    tx.commit().await.context(|| "recording the DDL".into())?;
    let mut applied = Applied::new(text, "shards concurrently", work.statements.len());
    applied.pending = false;
    Ok(vec![applied])
}
