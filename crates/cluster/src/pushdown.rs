//! What the coordinator's planner is told so that work runs on the workers.
//!
//! postgres_fdw pushes a join of two foreign tables on one server down as one remote query, and
//! an aggregate over such a join when it groups by the partition key, but it picks those plans
//! only when it can cost them: without remote estimates it prices a pushed join as a cross
//! product and keeps the join on the coordinator (true local statistics do not change that:
//! with every level's statistics in place and remote estimates off, shard pairs are still
//! joined on the coordinator, measured on 18). So every node's foreign server asks the node
//! for its estimates (`use_remote_estimate`: an EXPLAIN on the node per foreign relation the
//! planner keeps after pruning; it costs a key lookup through the coordinator about a fifth of
//! its throughput, BENCHMARKS.md), and the coordinator database plans joins partition by
//! partition (`enable_partitionwise_join`) so a colocated join becomes one join per shard pair,
//! each on its node, read in parallel. `enable_partitionwise_aggregate` stays off: when the
//! grouping lacks the distribution column it puts a local partial aggregate over every foreign
//! scan, which ends their asynchronous execution and makes `count(*)` and friends slower than
//! one aggregate over all shards read at once (measured); a session grouping by the
//! distribution column may turn it on to run the whole aggregate on the nodes.

use tokio_postgres::GenericClient;

use crate::error::{ClusterError, PgContext};
use shoal_catalog::model::Node;
use shoal_sql::{quote_ident, quote_literal};

/// Options every node's foreign server carries besides its address: the pushdown's, and the
/// name a coordinator session's connections carry on the node, which deadlock detection across
/// servers knows them by (`deadlock::watch`).
pub(crate) const SERVER_OPTIONS: [(&str, &str); 2] = [
    ("use_remote_estimate", "true"),
    (
        "application_name",
        crate::deadlock::COORDINATOR_APPLICATION_NAME,
    ),
];

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
