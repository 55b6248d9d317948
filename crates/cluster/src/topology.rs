//! The router's view of the cluster (`shoal_route::Topology`), read from the catalog and the
//! coordinator's own catalogs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::GenericClient;

use crate::error::ClusterError;
use shoal_catalog::model::{self, TableKind};
use shoal_route::{Distribution, KeyType, Placement, Shard, Table, Topology};
use shoal_sql::QualifiedName;

/// Every table of the coordinator database with its placement, for a session whose schemas
/// are `search_path` (as `current_schemas(true)` lists them). A distribution column whose type
/// or collation the router cannot hash exactly leaves its table to the coordinator. Views and
/// materialized views are listed too, always on the coordinator: one earlier on the search
/// path than a distributed table of the same name is what the name means (a stream table is a
/// view).
pub async fn load_topology(
    client: &impl GenericClient,
    search_path: Vec<String>,
) -> Result<Topology, ClusterError> {
    let mut tables = HashMap::new();
    // Row security policies are the coordinator's to apply: such tables are never routed.
    let mut row_security = HashSet::new();
    for row in client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    coalesce(array_agg(a.attname::text ORDER BY a.attnum)
                             FILTER (WHERE a.attnum IS NOT NULL), '{}'),
                    coalesce(array_agg(a.attname::text ORDER BY a.attnum)
                             FILTER (WHERE a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''), '{}'),
                    c.relrowsecurity
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_catalog.pg_attribute a
                    ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'shoal')
               AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
             GROUP BY 1, 2, c.relrowsecurity",
            &[],
        )
        .await?
    {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        if row.get::<_, bool>(4) {
            row_security.insert(name.clone());
        }
        tables.insert(
            name,
            Table {
                columns: row.get(2),
                with_defaults: row.get(3),
                placement: Placement::Local,
            },
        );
    }
    let placements = model::all_placements(client).await?;
    for table in model::list_tables(client).await? {
        if row_security.contains(&table.name) {
            continue;
        }
        let Some(entry) = tables.get_mut(&table.name) else {
            continue;
        };
        let shards: Vec<_> = placements
            .iter()
            .filter(|p| p.table_id == table.table_id)
            .collect();
        entry.placement = match table.kind {
            TableKind::Reference => Placement::Reference {
                replica: shards
                    .first()
                    .map_or_else(|| table.name.clone(), |p| p.shard_table.clone()),
            },
            TableKind::Hash | TableKind::Schema => {
                // A schema's tables (one shard) need no key; a hash table's must be hashable here.
                let key = match &table.distribution_column {
                    Some(column) => match key_type(client, table.relid, column).await? {
                        Some(ty) => Some((column.clone(), ty)),
                        None => continue,
                    },
                    None if table.shard_count == 1 => None,
                    None => continue,
                };
                let mut by_index: Vec<Shard> = Vec::new();
                for index in 0..table.shard_count {
                    // One placement per shard of a distributed table.
                    let Some(p) = shards.iter().find(|p| p.shard_index == index) else {
                        break;
                    };
                    by_index.push(Shard {
                        node: p.node_id,
                        table: p.shard_table.clone(),
                        shard_id: p.shard_id,
                    });
                }
                if by_index.len() != table.shard_count as usize {
                    continue;
                }
                Placement::Distributed(Distribution {
                    key,
                    colocation: i64::from(table.colocation_id),
                    shards: by_index,
                })
            }
        };
    }
    // A name that some other schema also defines may not mean pg_catalog's function.
    let builtin_functions: HashSet<String> = client
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc q
                               WHERE q.proname = p.proname
                                 AND q.pronamespace <> 'pg_catalog'::regnamespace)",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Topology {
        search_path,
        tables: Arc::new(tables),
        builtin_functions: Arc::new(builtin_functions),
        node_versions: Arc::default(),
    })
}

/// The key type of `column`, if the router hashes it exactly (a deterministic collation).
async fn key_type(
    client: &impl GenericClient,
    relid: u32,
    column: &str,
) -> Result<Option<KeyType>, ClusterError> {
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod), coalesce(co.collisdeterministic, true)
             FROM pg_catalog.pg_attribute a
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
             WHERE a.attrelid = $1 AND a.attname = $2",
            &[&relid, &column],
        )
        .await?;
    Ok(row.and_then(|row| {
        let deterministic: bool = row.get(1);
        let ty = KeyType::from_type_name(row.get(0)).ok()?;
        deterministic.then_some(ty)
    }))
}

/// `topology` with every distributed table's shards where the catalog places them now: one
/// catalog read, for the moment a move has switched (tables, columns and keys stay as they
/// were read).
pub async fn with_current_placements(
    client: &impl GenericClient,
    topology: &Topology,
) -> Result<Topology, ClusterError> {
    let placements = model::all_placements(client).await?;
    let mut tables = (*topology.tables).clone();
    for table in model::list_tables(client).await? {
        let Some(entry) = tables.get_mut(&table.name) else {
            continue;
        };
        let Placement::Distributed(distribution) = &mut entry.placement else {
            continue;
        };
        for p in placements.iter().filter(|p| p.table_id == table.table_id) {
            if let Some(shard) = distribution.shards.get_mut(p.shard_index as usize) {
                shard.node = p.node_id;
                shard.table = p.shard_table.clone();
            }
        }
    }
    Ok(Topology {
        search_path: topology.search_path.clone(),
        tables: Arc::new(tables),
        builtin_functions: topology.builtin_functions.clone(),
        node_versions: topology.node_versions.clone(),
    })
}
