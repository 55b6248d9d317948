//! `shoal explain`: for one query, which parts run on which worker and what is shipped to the
//! coordinator, on both paths an application can take (Shoal's endpoint, the coordinator).
//! `plan.rs` is the pure part; this reads the catalogs and runs EXPLAIN.

mod plan;

use std::collections::HashMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{ClusterError, PgContext};
pub use plan::{endpoint_path, summarize, CoordinatorPlan, EndpointPath, NodeWork, SplitPart};
use shoal_catalog::model;

/// Both paths of one query.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub endpoint: EndpointPath,
    pub coordinator: CoordinatorPlan,
    /// Whether the coordinator's figures are counted (EXPLAIN ANALYZE) or estimated.
    pub analyzed: bool,
    /// The coordinator's plan as EXPLAIN VERBOSE writes it.
    pub coordinator_plan: String,
    /// What the coordinator answered instead of a plan, for a statement the endpoint refuses
    /// (its EXPLAIN fails as the statement would).
    pub coordinator_error: Option<String>,
    pub nodes: Vec<NodeAddress>,
}

#[derive(Debug, Serialize)]
pub struct NodeAddress {
    pub node: i32,
    pub address: String,
}

/// Explains `sql` as the session of `client` would run it (its search_path). With `analyze`
/// the coordinator runs it, inside a transaction that is rolled back, so a write changes
/// nothing.
pub async fn explain(
    client: &Client,
    sql: &str,
    analyze: bool,
) -> Result<Explanation, ClusterError> {
    let search_path: Vec<String> = client
        .query_one("SELECT current_schemas(true)::text[]", &[])
        .await?
        .get(0);
    let topology = crate::topology::load_topology(client, search_path).await?;
    let endpoint = endpoint_path(sql, &topology);

    let nodes = model::list_nodes(client).await?;
    let servers: HashMap<&str, i32> = nodes
        .iter()
        .map(|n| (n.fdw_server.as_str(), n.node_id))
        .collect();
    let mut foreign_tables = HashMap::new();
    for row in client
        .query(
            "SELECT n.nspname::text, c.relname::text, s.srvname::text,
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_catalog.pg_foreign_table f
             JOIN pg_catalog.pg_class c ON c.oid = f.ftrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver",
            &[],
        )
        .await?
    {
        if let Some(&node) = servers.get(row.get::<_, String>(2).as_str()) {
            // EXPLAIN VERBOSE writes joined relations as schema.name, quoted where SQL
            // needs it (as quote_ident does).
            foreign_tables.insert(row.get::<_, String>(3), node);
            // Plain scans name schema and relation apart, unquoted.
            foreign_tables.insert(
                format!("{}.{}", row.get::<_, String>(0), row.get::<_, String>(1)),
                node,
            );
        }
    }

    let options = if analyze {
        "ANALYZE, VERBOSE, FORMAT JSON"
    } else {
        "VERBOSE, FORMAT JSON"
    };
    // The user's query, as they wrote it, is what is explained.
    let explain_sql = format!("EXPLAIN ({options}) {sql}");
    let text_sql = format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}");
    client.batch_execute("BEGIN").await?;
    let result = async {
        let json = lines(client, &explain_sql).await?;
        let text = lines(client, &text_sql).await?;
        Ok::<_, ClusterError>((json, text))
    }
    .await;
    client.batch_execute("ROLLBACK").await?;
    let (json, text) = match result {
        Err(error) if matches!(endpoint, EndpointPath::Refused { .. }) => {
            return Ok(Explanation {
                endpoint,
                coordinator: CoordinatorPlan::default(),
                analyzed: analyze,
                coordinator_plan: String::new(),
                coordinator_error: Some(error.to_string()),
                nodes: Vec::new(),
            });
        }
        other => other?,
    };
    let json: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
        ClusterError::Unsupported(format!("EXPLAIN's output could not be read: {e}"))
    })?;
    Ok(Explanation {
        endpoint,
        coordinator: summarize(&json, &foreign_tables),
        analyzed: analyze,
        coordinator_plan: text,
        coordinator_error: None,
        nodes: nodes
            .iter()
            .map(|n| NodeAddress {
                node: n.node_id,
                address: format!("{}:{}", n.host, n.port),
            })
            .collect(),
    })
}

/// The rows of a one-column answer, one per line (simple protocol: EXPLAIN takes the query
/// as written, parameters and all, and answers text).
async fn lines(client: &Client, sql: &str) -> Result<String, ClusterError> {
    let messages = client
        .simple_query(sql)
        .await
        .context(|| "the coordinator could not explain the query".to_string())?;
    let rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(String::from),
            _ => None,
        })
        .collect();
    Ok(rows.join("\n"))
}
