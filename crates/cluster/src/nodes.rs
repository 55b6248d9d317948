//! Registering, removing and flagging worker nodes.

use crate::error::{pg_message, ClusterError, PgContext};
use crate::privileges::{Need, Privileges};
use crate::reference;
use crate::resolve::{parse_address, resolve_node};
use crate::Cluster;
use shoal_catalog::model::{self, NewNode, Node, TableKind};
use shoal_sql::{quote_ident, quote_literal};

/// The oldest PostgreSQL Shoal works with.
pub const MIN_SERVER_VERSION_NUM: i32 = 150000;

pub struct AddNode<'a> {
    /// `HOST:PORT`.
    pub address: &'a str,
    /// The node's database; the coordinator's by default.
    pub dbname: Option<&'a str>,
    pub should_have_shards: bool,
}

/// Registers a node after checking that it can serve as one: reachable with the coordinator's
/// credentials, PostgreSQL 15 or newer, `wal_level = logical`. Creates the postgres_fdw server
/// and user mapping the coordinator reaches it through, and copies every reference table to it.
pub async fn add_node(cluster: &Cluster, request: &AddNode<'_>) -> Result<Node, ClusterError> {
    let (host, port) = parse_address(request.address)?;
    let dbname = request
        .dbname
        .unwrap_or(&cluster.params().dbname)
        .to_string();
    let address = format!("{host}:{port}");
    if let Some(existing) = model::find_node_by_address(cluster.client(), &host, port)
        .await?
        .into_iter()
        .find(|n| n.dbname == dbname)
    {
        return Err(ClusterError::NodeAlreadyRegistered {
            address,
            node_id: existing.node_id,
        });
    }

    let params = cluster.params().with_target(&host, port, &dbname);
    let node_client = shoal_catalog::connect(&params, "shoal node add")
        .await
        .map_err(|e| ClusterError::NodeUnreachable {
            address: address.clone(),
            reason: match e {
                shoal_catalog::CatalogError::Connect { source, .. } => pg_message(&source),
                other => other.to_string(),
            },
        })?;
    let row = node_client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                    current_setting('wal_level')",
            &[],
        )
        .await
        .context(|| format!("reading the settings of {address}"))?;
    let version_num: i32 = row.get(0);
    check_node_settings(&address, version_num, row.get(1), row.get(2))?;
    // Everything the role needs is checked before anything is created (nothing fails halfway).
    let privileges = Privileges::read(&node_client).await?;
    if let Some(missing) = privileges.missing(Need::Objects) {
        return Err(ClusterError::Unsupported(format!("{address}: {missing}")));
    }
    let with_references = model::list_tables(cluster.client())
        .await?
        .iter()
        .any(|t| t.kind == TableKind::Reference);
    let for_references =
        privileges
            .missing(Need::Subscription)
            .or(Privileges::read(cluster.client())
                .await?
                .missing(Need::Replication)
                .map(|m| format!("on the coordinator: {m}")));
    match (&for_references, with_references) {
        (Some(missing), true) => {
            return Err(ClusterError::Unsupported(format!(
                "{address} cannot take the reference tables: {missing}"
            )))
        }
        (Some(missing), false) => {
            tracing::warn!(node = %address, "reference tables and online moves to it will be refused: {missing}")
        }
        (None, _) => {}
    }
    if let Some(missing) = privileges.missing(Need::Replication) {
        tracing::warn!(node = %address, "online moves from it and stream tables will be refused: {missing}");
    }
    if is_same_server(cluster, &node_client).await? {
        return Err(ClusterError::Unsupported(format!(
            "{address}/{dbname} is the coordinator database itself; a node must be another database"
        )));
    }

    let mut coordinator = cluster.coordinator("shoal node add").await?;
    let tx = coordinator.transaction().await?;
    let node = model::insert_node(
        &tx,
        &NewNode {
            host: &host,
            port,
            dbname: &dbname,
            username: &cluster.params().user,
            should_have_shards: request.should_have_shards,
            server_version_num: version_num,
        },
    )
    .await?;
    // The node's own password: a password file may hold one per server.
    let params = cluster.params().with_target(&host, port, &dbname);
    tx.batch_execute(&fdw_server_ddl(
        &node,
        params.password(),
        params.server_tls_options(),
    ))
    .await
    .context(|| format!("creating the foreign server for {address}"))?;
    let superuser: bool = tx
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    ensure_public_mapping(&tx, &node, params.password(), superuser).await?;
    shoal_ddl::install_node(&node_client, &tx, &node).await?;
    tx.commit()
        .await
        .context(|| "registering the node".to_string())?;

    if let Err(error) = reference::replicate_all_to_node(cluster, &node).await {
        // Leave nothing half-registered: the node goes, its replicas are cleaned up.
        let _ = forget_node(cluster, &node).await;
        return Err(error);
    }
    Ok(node)
}

/// A node must run PostgreSQL 15 or newer with `wal_level = logical` (shard moves and change
/// capture use logical replication and decoding).
pub fn check_node_settings(
    address: &str,
    version_num: i32,
    version: &str,
    wal_level: &str,
) -> Result<(), ClusterError> {
    if version_num < MIN_SERVER_VERSION_NUM {
        return Err(ClusterError::NodeTooOld {
            address: address.to_string(),
            version: version.to_string(),
        });
    }
    if wal_level != "logical" {
        return Err(ClusterError::NodeNotLogical {
            address: address.to_string(),
            wal_level: wal_level.to_string(),
        });
    }
    Ok(())
}

/// Whether `node_client` is connected to the coordinator's own database: a node that is the
/// coordinator would make every foreign table point back at itself.
async fn is_same_server(
    cluster: &Cluster,
    node_client: &tokio_postgres::Client,
) -> Result<bool, ClusterError> {
    // Copies of one data directory share a system identifier, so the port is compared too.
    let identity = "SELECT system_identifier::text || '/' || current_setting('port') || '/'
                           || current_database()
                    FROM pg_control_system()";
    let ours: String = cluster.client().query_one(identity, &[]).await?.get(0);
    let theirs: String = node_client.query_one(identity, &[]).await?.get(0);
    Ok(ours == theirs)
}

/// DDL for the postgres_fdw server and user mapping of a node. Options are literals (DDL takes no
/// bind parameters), quoted.
fn fdw_server_ddl(node: &Node, password: Option<&str>, tls: &[(&str, String)]) -> String {
    let server = quote_ident(&node.fdw_server);
    let tls: String = tls
        .iter()
        .map(|(keyword, value)| format!(", {keyword} {}", quote_literal(value)))
        .collect();
    let pushdown = crate::pushdown::server_options_sql();
    // async_capable lets the planner scan shards on different nodes in parallel; batch_size
    // makes INSERT routing send rows in batches; fetch_size reads large scans in fewer round
    // trips; the pushdown options let joins and aggregates run on the node (`pushdown.rs`).
    format!(
        "CREATE SERVER {server} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, \
         dbname {}, async_capable 'true', batch_size '1000', fetch_size '10000'{pushdown}{tls});\n\
         CREATE USER MAPPING FOR CURRENT_USER SERVER {server} OPTIONS ({});",
        quote_literal(&node.host),
        quote_literal(&node.port.to_string()),
        quote_literal(&node.dbname),
        mapping_options(node, password, false),
    )
}

fn mapping_options(node: &Node, password: Option<&str>, passwordless_for_others: bool) -> String {
    let mut options = format!("user {}", quote_literal(&node.username));
    match password {
        Some(password) => options.push_str(&format!(", password {}", quote_literal(password))),
        // Without it postgres_fdw refuses other roles when the node asks for no password.
        None if passwordless_for_others => options.push_str(", password_required 'false'"),
        None => {}
    }
    options
}

/// The user mapping every other role of the coordinator reaches a node through: a role that
/// may read or write a distributed table (GRANT on the table, checked by the coordinator) needs
/// no mapping of its own. Its options are visible to the server's owner and superusers only,
/// and without USAGE on the server nobody else can use it for a foreign table of their own.
/// Only a superuser may waive the password; `superuser` says whether this role is one.
pub async fn ensure_public_mapping(
    client: &impl tokio_postgres::GenericClient,
    node: &Node,
    password: Option<&str>,
    superuser: bool,
) -> Result<(), ClusterError> {
    client
        .batch_execute(&format!(
            "CREATE USER MAPPING IF NOT EXISTS FOR PUBLIC SERVER {} OPTIONS ({})",
            quote_ident(&node.fdw_server),
            mapping_options(node, password, superuser)
        ))
        .await
        .context(|| format!("creating the shared user mapping for node {}", node.node_id))
}

/// Unregisters a node. Refused while it holds shards of distributed tables; reference table
/// replicas on it are removed with it.
pub async fn remove_node(cluster: &Cluster, node_text: &str) -> Result<Node, ClusterError> {
    let node = resolve_node(cluster.client(), node_text).await?;
    let placements = model::placements_on_node(cluster.client(), node.node_id).await?;
    let tables = model::list_tables(cluster.client()).await?;
    let shard_placements: Vec<_> = placements
        .iter()
        .filter(|p| {
            tables
                .iter()
                .any(|t| t.table_id == p.table_id && t.kind != TableKind::Reference)
        })
        .collect();
    if !shard_placements.is_empty() {
        let examples = shard_placements
            .iter()
            .take(5)
            .map(|p| format!("shard {} ({})", p.shard_id, p.shard_table))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ClusterError::NodeHasPlacements {
            node: format!("{} ({})", node.node_id, node.address()),
            count: shard_placements.len(),
            examples: if shard_placements.len() > 5 {
                format!("{examples}, ...")
            } else {
                examples
            },
        });
    }
    forget_node(cluster, &node).await?;
    Ok(node)
}

/// Drops the node's reference replication and replicas (best effort: it may be unreachable),
/// then its foreign server and its catalog rows.
async fn forget_node(cluster: &Cluster, node: &Node) -> Result<(), ClusterError> {
    reference::detach_node(cluster, node).await?;
    let mut coordinator = cluster.coordinator("shoal node remove").await?;
    let tx = coordinator.transaction().await?;
    model::delete_placements_on_node(&tx, node.node_id).await?;
    tx.execute(
        "DELETE FROM shoal.cleanup_record WHERE node_id = $1",
        &[&node.node_id],
    )
    .await?;
    tx.batch_execute(&format!(
        "DROP SERVER IF EXISTS {} CASCADE",
        quote_ident(&node.fdw_server)
    ))
    .await
    .context(|| format!("dropping the foreign server of node {}", node.node_id))?;
    model::delete_node(&tx, node.node_id).await?;
    tx.commit()
        .await
        .context(|| "removing the node".to_string())?;
    Ok(())
}

/// `node disable` / `node activate` / the should-have-shards setting.
pub async fn set_node_flags(
    cluster: &Cluster,
    node_text: &str,
    is_active: Option<bool>,
    should_have_shards: Option<bool>,
) -> Result<Node, ClusterError> {
    let node = resolve_node(cluster.client(), node_text).await?;
    model::set_node_flags(
        cluster.client(),
        node.node_id,
        is_active,
        should_have_shards,
    )
    .await?;
    Ok(model::get_node(cluster.client(), node.node_id)
        .await?
        .unwrap_or(node))
}

/// What Shoal's endpoint needs of a node and it lacks, in words for the operator: a
/// transaction that writes on several nodes prepares on each (`max_prepared_transactions`).
pub async fn endpoint_warning(
    cluster: &Cluster,
    node: &Node,
) -> Result<Option<String>, ClusterError> {
    let client = cluster.node_client(node, "shoal node add").await?;
    let prepared: i32 = client
        .query_one(
            "SELECT current_setting('max_prepared_transactions')::int",
            &[],
        )
        .await
        .context(|| format!("reading the settings of {}", node.address()))?
        .get(0);
    Ok(endpoint_readiness(&node.address(), prepared))
}

/// The warning for a node with `max_prepared_transactions = prepared`, if any.
pub fn endpoint_readiness(address: &str, prepared: i32) -> Option<String> {
    (prepared == 0).then(|| {
        format!(
            "node {address} has max_prepared_transactions = 0: transactions through Shoal's \
             endpoint that write on it and another server will fail at COMMIT; set \
             max_prepared_transactions (e.g. to max_connections) in its postgresql.conf and \
             restart it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_prepared_transactions_is_named_with_the_setting() {
        let warning = endpoint_readiness("db1:5432", 0).unwrap();
        assert!(warning.contains("db1:5432") && warning.contains("max_prepared_transactions"));
        assert_eq!(endpoint_readiness("db1:5432", 100), None);
    }

    #[test]
    fn node_settings_are_checked() {
        assert!(check_node_settings("h:1", 150004, "15.4", "logical").is_ok());
        assert!(check_node_settings("h:1", 170000, "17.0", "logical").is_ok());
        let old = check_node_settings("h:1", 140010, "14.10", "logical").unwrap_err();
        assert!(old.to_string().contains("PostgreSQL 14.10"), "{old}");
        assert!(old.to_string().contains("15 or newer"), "{old}");
        let replica = check_node_settings("h:1", 150004, "15.4", "replica").unwrap_err();
        assert!(
            replica.to_string().contains("wal_level = logical"),
            "{replica}"
        );
    }

    #[test]
    fn fdw_ddl_quotes_every_option() {
        let node = Node {
            node_id: 3,
            host: "db'host".into(),
            port: 5433,
            dbname: "my db".into(),
            username: "alice".into(),
            is_active: true,
            should_have_shards: true,
            server_version_num: 150000,
            fdw_server: "shoal_node_3".into(),
        };
        let tls = [("sslmode", "verify-full".to_string())];
        let ddl = fdw_server_ddl(&node, Some("pa'ss"), &tls);
        assert!(ddl.contains(
            "use_remote_estimate 'true', application_name 'shoal coordinator %p', \
             sslmode 'verify-full')"
        ));
        assert!(ddl.contains(r#"CREATE SERVER "shoal_node_3" FOREIGN DATA WRAPPER postgres_fdw"#));
        assert!(ddl.contains("host 'db''host', port '5433', dbname 'my db'"));
        assert!(ddl.contains("user 'alice', password 'pa''ss'"));
        assert!(!fdw_server_ddl(&node, None, &[]).contains("password"));
    }
}
