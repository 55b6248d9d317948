//! What the coordinator's planner is told so that work runs on the workers.
//!
//! postgres_fdw pushes a join of two foreign tables on one server down as one remote query, and
//! an aggregate over such a join when it groups by the partition key, but it picks those plans
//! only when it can cost them: without remote estimates it prices a pushed join as a cross
//! product and keeps the join on the coordinator (true local statistics do not change that:
//! with every level's statistics in place and remote estimates off, shard pairs are still
//! joined on the coordinator, measured on 18). So every node's foreign server asks the node
//! for its estimates (`use_remote_estimate`: an EXPLAIN on the node per foreign relation the
//! planner keeps after pruning, which costs a key lookup through the coordinator about a fifth
//! of its throughput, BENCHMARKS.md), except on the first table of each colocation group
//! ([`Estimates`]), and the coordinator database plans joins partition by partition
//! (`enable_partitionwise_join`) so a colocated join becomes one join per shard pair, each on
//! its node, read in parallel. `enable_partitionwise_aggregate` stays off: when the grouping
//! lacks the distribution column it puts a local partial aggregate over every foreign scan,
//! which ends their asynchronous execution and makes `count(*)` and friends slower than one
//! aggregate over all shards read at once (measured); a session grouping by the distribution
//! column may turn it on to run the whole aggregate on the nodes.

use tokio_postgres::GenericClient;

use crate::error::{ClusterError, PgContext};
use shoal_catalog::model::Node;
use shoal_sql::{quote_ident, quote_literal};

/// Options every node's foreign server carries besides its address.
pub(crate) const SERVER_OPTIONS: [(&str, &str); 1] = [("use_remote_estimate", "true")];

/// Where the coordinator's planner gets the estimates of one table's foreign partitions.
///
/// postgres_fdw costs a join of two foreign tables with remote estimates when either side asks
/// for them, so a colocation group needs them on all its tables but one for every join in the
/// group to be pushed down. The one is the group's first table (lowest id: the table the others
/// were colocated with, typically the one applications look up by key), whose key lookups then
/// plan without a round trip to the node. Its shards' local statistics are kept true
/// (`statistics`), which is all a scan of one table needs; what it loses is the node's own
/// costing of a sorted read, so a sort with a limit over all its shards may become a merge of
/// per-shard sorts (BENCHMARKS.md has both). A self-join of that table on its distribution
/// column is then joined on the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimates {
    /// From the coordinator's statistics of the foreign partition (`use_remote_estimate
    /// 'false'` on the foreign table).
    Local,
    /// From an EXPLAIN on the node (the foreign server's `use_remote_estimate`).
    Remote,
}

impl Estimates {
    /// For table `table_id` of a group whose tables (it included or not) are `group`.
    pub fn for_member(table_id: i32, group: impl IntoIterator<Item = i32>) -> Estimates {
        if group.into_iter().all(|other| other >= table_id) {
            Estimates::Local
        } else {
            Estimates::Remote
        }
    }

    /// For a table being distributed: the first of its group plans on local estimates.
    pub fn for_new_member(group_has_tables: bool) -> Estimates {
        if group_has_tables {
            Estimates::Remote
        } else {
            Estimates::Local
        }
    }

    /// The foreign table's options for this choice, as they go into `OPTIONS (...)`: `, name
    /// 'value'` each (none for `Remote`, which the server carries).
    pub fn table_options_sql(self) -> &'static str {
        match self {
            Estimates::Local => ", use_remote_estimate 'false'",
            Estimates::Remote => "",
        }
    }
}

/// Gives the foreign partitions of each colocation group's first table the local estimates
/// [`Estimates`] gives them (partitions made by older versions); a foreign table on which an
/// operator set `use_remote_estimate` keeps it. Returns how many foreign tables changed.
pub async fn ensure_local_estimates(client: &impl GenericClient) -> Result<u64, ClusterError> {
    let leaves = client
        .query(
            "SELECT format('%I.%I', s.schema_name, s.shard_name)
             FROM shoal.distributed_table t
             JOIN shoal.shard s USING (table_id)
             JOIN pg_catalog.pg_foreign_table f
               ON f.ftrelid = to_regclass(format('%I.%I', s.schema_name, s.shard_name))
             WHERE t.kind IN ('hash', 'schema')
               AND t.table_id = (SELECT min(o.table_id) FROM shoal.distributed_table o
                                 WHERE o.colocation_id = t.colocation_id)
               AND NOT EXISTS (SELECT FROM unnest(f.ftoptions) o
                               WHERE split_part(o, '=', 1) = 'use_remote_estimate')",
            &[],
        )
        .await?;
    for leaf in &leaves {
        let leaf: String = leaf.get(0);
        client
            .batch_execute(&format!(
                "ALTER FOREIGN TABLE {leaf} OPTIONS (ADD{})",
                Estimates::Local.table_options_sql().trim_start_matches(',')
            ))
            .await
            .context(|| format!("setting use_remote_estimate on {leaf}"))?;
    }
    Ok(leaves.len() as u64)
}

/// Database-level settings of the coordinator database, for every session that opens after.
const DATABASE_SETTINGS: [(&str, &str); 1] = [("enable_partitionwise_join", "on")];

/// Sets the coordinator database's planner settings it does not have yet (an operator's own
/// value stays). `Err` carries PostgreSQL's words when the role may not (only the database's
/// owner or a superuser may).
pub async fn set_database_settings(client: &impl GenericClient) -> Result<(), ClusterError> {
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    let present: Vec<String> = client
        .query_one(
            "SELECT coalesce((SELECT setconfig FROM pg_catalog.pg_db_role_setting
                              WHERE setrole = 0 AND setdatabase =
                                    (SELECT oid FROM pg_catalog.pg_database
                                     WHERE datname = current_database())), '{}')",
            &[],
        )
        .await?
        .get(0);
    for (name, value) in DATABASE_SETTINGS {
        if present.iter().any(|s| s.starts_with(&format!("{name}="))) {
            continue;
        }
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} SET {name} = {}",
                quote_ident(&database),
                quote_literal(value)
            ))
            .await
            .context(|| format!("setting {name} for database {database}"))?;
    }
    Ok(())
}

/// Gives a node's foreign server the options it lacks (servers made by older versions); an
/// option an operator set stays as set.
pub async fn ensure_server_options(
    client: &impl GenericClient,
    node: &Node,
) -> Result<(), ClusterError> {
    let present: Vec<String> = client
        .query_one(
            "SELECT coalesce(srvoptions, '{}') FROM pg_catalog.pg_foreign_server WHERE srvname = $1",
            &[&node.fdw_server],
        )
        .await?
        .get(0);
    for (name, value) in SERVER_OPTIONS {
        if present.iter().any(|o| o.starts_with(&format!("{name}="))) {
            continue;
        }
        client
            .batch_execute(&format!(
                "ALTER SERVER {} OPTIONS (ADD {name} {})",
                quote_ident(&node.fdw_server),
                quote_literal(value)
            ))
            .await
            .context(|| format!("setting {name} on foreign server {}", node.fdw_server))?;
    }
    Ok(())
}

/// The options as they go into `CREATE SERVER ... OPTIONS (...)`: `, name 'value'` each.
pub(crate) fn server_options_sql() -> String {
    SERVER_OPTIONS
        .iter()
        .map(|(name, value)| format!(", {name} {}", quote_literal(value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_table_of_a_group_plans_on_local_estimates() {
        assert_eq!(Estimates::for_member(3, [3, 5, 9]), Estimates::Local);
        assert_eq!(Estimates::for_member(5, [3, 5, 9]), Estimates::Remote);
        // Once the first table is gone the next one is first: still one table per group.
        assert_eq!(Estimates::for_member(5, [5, 9]), Estimates::Local);
        assert_eq!(Estimates::for_member(9, []), Estimates::Local);
        assert_eq!(Estimates::for_new_member(false), Estimates::Local);
        assert_eq!(Estimates::for_new_member(true), Estimates::Remote);
    }
}
