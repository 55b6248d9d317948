//! Installing DDL propagation: its functions and event triggers on the coordinator, an inbox on
//! every node, and the coordinator's foreign table for each node's inbox. Every step is
//! idempotent, so `shoal init` installs and upgrades alike.

use tokio_postgres::{Client, GenericClient};

use crate::error::{Context, DdlError};
use shoal_catalog::model::Node;
use shoal_sql::{quote_ident, quote_literal};

const DESCRIBE_SQL: &str = include_str!("../sql/describe.sql");
const COORDINATOR_SQL: &str = include_str!("../sql/coordinator.sql");
const NODE_SQL: &str = include_str!("../sql/node.sql");

/// The schema that holds Shoal's objects on a node (never the coordinator's `shoal`).
pub const NODE_SCHEMA: &str = "shoal_worker";

/// The event triggers, by event, with the function each runs.
const EVENT_TRIGGERS: &[(&str, &str, &str)] = &[
    (
        "shoal_ddl_command_start",
        "ddl_command_start",
        "shoal.on_ddl_command_start",
    ),
    (
        "shoal_ddl_command_end",
        "ddl_command_end",
        "shoal.on_ddl_command_end",
    ),
    ("shoal_sql_drop", "sql_drop", "shoal.on_sql_drop"),
];

/// Whether plain-SQL DDL on managed tables is intercepted on the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triggers {
    Installed,
    /// Creating event triggers needs the superuser (or a managed service's admin role); the
    /// string is PostgreSQL's refusal.
    NotPermitted(String),
}

/// The definition reader (`describe_table` and its helpers) for `schema`.
fn describe_sql(schema: &str) -> String {
    DESCRIBE_SQL.replace("@schema@", schema)
}

/// Installs or replaces the coordinator's half in one transaction: the functions, the upgrade of
/// records written before DDL propagation, and the event triggers (last, so nothing is
/// intercepted half-installed). Runs on a catalog already migrated to the latest version.
pub async fn install_coordinator(client: &mut Client) -> Result<Triggers, DdlError> {
    let tx = client
        .transaction()
        .await
        .context(|| "starting the installation of DDL propagation".into())?;
    tx.batch_execute(&describe_sql("shoal"))
        .await
        .context(|| "installing shoal.describe_table on the coordinator".into())?;
    tx.batch_execute(COORDINATOR_SQL)
        .await
        .context(|| "installing DDL propagation on the coordinator".into())?;
    tx.execute("SELECT shoal.ddl_upgrade_records()", &[])
        .await
        .context(|| "upgrading the records of distributed tables".into())?;
    tx.batch_execute("SAVEPOINT event_triggers")
        .await
        .context(|| "installing the event triggers".into())?;
    let triggers = match tx.batch_execute(&event_trigger_ddl()).await {
        Ok(()) => Triggers::Installed,
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            tx.batch_execute("ROLLBACK TO SAVEPOINT event_triggers")
                .await
                .context(|| "installing the event triggers".into())?;
            Triggers::NotPermitted(shoal_catalog::pg_message(&error))
        }
        Err(error) => {
            return Err(error).context(|| "installing the event triggers".into());
        }
    };
    tx.commit()
        .await
        .context(|| "committing the installation of DDL propagation".into())?;
    Ok(triggers)
}

fn event_trigger_ddl() -> String {
    EVENT_TRIGGERS
        .iter()
        .map(|(name, event, function)| {
            format!(
                "DROP EVENT TRIGGER IF EXISTS {name};\n\
                 CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {function}();"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Installs or replaces a node's half (its inbox, on `node_client`), and the coordinator's
/// foreign table that writes to it (on `coordinator`).
pub async fn install_node(
    node_client: &impl GenericClient,
    coordinator: &impl GenericClient,
    node: &Node,
) -> Result<(), DdlError> {
    let on_node = || {
        format!(
            "preparing node {} ({}) for DDL",
            node.node_id,
            node.address()
        )
    };
    node_client
        .batch_execute(&format!(
            "BEGIN;\n{NODE_SQL}\n{}\nCOMMIT;",
            describe_sql(NODE_SCHEMA)
        ))
        .await
        .context(on_node)?;
    coordinator
        .batch_execute(&inbox_table_ddl(node))
        .await
        .context(on_node)?;
    Ok(())
}

/// The name of the coordinator's foreign table for a node's inbox (`shoal.ddl_send` finds it
/// by the same rule).
pub fn inbox_table(node_id: i32) -> String {
    format!("ddl_inbox_{node_id}")
}

fn inbox_table_ddl(node: &Node) -> String {
    // Only the columns the coordinator writes (and `result`, which the node fills in): the
    // others take the node's defaults.
    format!(
        "CREATE FOREIGN TABLE IF NOT EXISTS shoal.{} (coordinator_xid text, statements text[], \
         describe text, result jsonb) SERVER {} OPTIONS (schema_name {}, table_name 'ddl_inbox')",
        quote_ident(&inbox_table(node.node_id)),
        quote_ident(&node.fdw_server),
        quote_literal(NODE_SCHEMA)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_reader_is_installed_per_schema() {
        let sql = describe_sql(NODE_SCHEMA);
        assert!(sql.contains("FUNCTION shoal_worker.describe_table(rel oid)"));
        assert!(sql.contains("shoal_worker.foreign_key_actions("));
        assert!(!sql.contains("@schema@"));
    }

    #[test]
    fn every_event_has_its_trigger() {
        let ddl = event_trigger_ddl();
        for event in ["ddl_command_start", "ddl_command_end", "sql_drop"] {
            assert!(
                ddl.contains(&format!(" ON {event} EXECUTE FUNCTION")),
                "{ddl}"
            );
        }
        assert!(ddl.contains("DROP EVENT TRIGGER IF EXISTS shoal_sql_drop;"));
    }

    #[test]
    fn the_inbox_table_points_at_the_node_schema() {
        let node = Node {
            node_id: 7,
            host: "h".into(),
            port: 1,
            dbname: "d".into(),
            username: "u".into(),
            is_active: true,
            should_have_shards: true,
            server_version_num: 150000,
            fdw_server: "shoal_node_7".into(),
        };
        assert_eq!(
            inbox_table_ddl(&node),
            "CREATE FOREIGN TABLE IF NOT EXISTS shoal.\"ddl_inbox_7\" (coordinator_xid text, \
             statements text[], describe text, result jsonb) SERVER \"shoal_node_7\" OPTIONS \
             (schema_name 'shoal_worker', table_name 'ddl_inbox')"
        );
    }
}
