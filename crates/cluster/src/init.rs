//! `shoal init`: the catalog created or migrated, then DDL propagation installed (or upgraded)
//! on the coordinator and on every registered node.

use serde::Serialize;

use crate::error::ClusterError;
use crate::Cluster;
use shoal_catalog::model;
use shoal_catalog::{ConnectParams, InitReport};
use shoal_ddl::Triggers;

#[derive(Debug, Clone, Serialize)]
pub struct ClusterInit {
    pub from_version: i32,
    pub to_version: i32,
    /// Whether the event triggers that propagate plain-SQL DDL are installed; `Some(reason)`
    /// when PostgreSQL refused them.
    pub ddl_triggers_refused: Option<String>,
    /// Nodes that could not be prepared for DDL (address and reason): `shoal init` again once
    /// they are back.
    pub unprepared_nodes: Vec<(String, String)>,
    /// Why the coordinator database's planner settings (`pushdown.rs`) could not be set, if
    /// they could not: joins and aggregates then run on the coordinator.
    pub planner_settings_refused: Option<String>,
}

/// Idempotent: on an up-to-date cluster it changes nothing but the functions it replaces.
pub async fn init_cluster(
    params: &ConnectParams,
    label: &str,
) -> Result<ClusterInit, ClusterError> {
    let mut client = shoal_catalog::connect(params, label).await?;
    let InitReport {
        from_version,
        to_version,
    } = shoal_catalog::init(&mut client).await?;
    let cluster = Cluster::connect_labelled(params.clone(), label).await?;
    let mut unprepared_nodes = Vec::new();
    let superuser: bool = cluster
        .client()
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    let planner_settings_refused = crate::pushdown::set_database_settings(cluster.client())
        .await
        .err()
        .map(|e| e.to_string());
    for node in model::list_nodes(cluster.client()).await? {
        crate::pushdown::ensure_server_options(cluster.client(), &node).await?;
        let node_params = params.with_target(&node.host, node.port, &node.dbname);
        crate::nodes::ensure_public_mapping(
            cluster.client(),
            &node,
            node_params.password(),
            superuser,
        )
        .await?;
        let prepared = match cluster.node_client(&node, label).await {
            Ok(node_client) => shoal_ddl::install_node(&node_client, cluster.client(), &node)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(reason) = prepared {
            tracing::warn!(node = node.node_id, %reason, "node not prepared for DDL");
            unprepared_nodes.push((node.address(), reason));
        }
    }
    let ddl_triggers_refused = match shoal_ddl::install_coordinator(&mut client).await? {
        Triggers::Installed => None,
        Triggers::NotPermitted(reason) => Some(reason),
    };
    Ok(ClusterInit {
        from_version,
        to_version,
        ddl_triggers_refused,
        unprepared_nodes,
        planner_settings_refused,
    })
}
