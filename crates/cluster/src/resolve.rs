//! Turning what a user typed (table, schema and node names) into catalog objects.

use tokio_postgres::GenericClient;

use crate::error::{ClusterError, PgContext};
use shoal_catalog::model::{self, Node};
use shoal_sql::QualifiedName;

/// A node as given on the command line: its id, or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    Id(i32),
    Address { host: String, port: u16 },
}

impl NodeRef {
    pub fn parse(text: &str) -> Result<NodeRef, ClusterError> {
        if let Ok(id) = text.parse::<i32>() {
            return Ok(NodeRef::Id(id));
        }
        let (host, port) = parse_address(text)?;
        Ok(NodeRef::Address { host, port })
    }
}

/// Splits `HOST:PORT` (IPv6 as `[::1]:5432`).
pub fn parse_address(text: &str) -> Result<(String, u16), ClusterError> {
    let bad = || ClusterError::BadAddress(text.to_string());
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

pub async fn resolve_node(client: &impl GenericClient, text: &str) -> Result<Node, ClusterError> {
    match NodeRef::parse(text)? {
        NodeRef::Id(id) => model::get_node(client, id)
            .await?
            .ok_or_else(|| ClusterError::UnknownNode(text.to_string())),
        NodeRef::Address { host, port } => {
            let mut nodes = model::find_node_by_address(client, &host, port).await?;
            match nodes.len() {
                0 => Err(ClusterError::UnknownNode(text.to_string())),
                1 => Ok(nodes.remove(0)),
                _ => Err(ClusterError::Unsupported(format!(
                    "several nodes are registered at {text} (different databases); give the node id"
                ))),
            }
        }
    }
}

/// A relation on the coordinator, found by its SQL name (`orders`, `shop."Order Items"`), as
/// PostgreSQL itself resolves it with the current search path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub relid: u32,
    pub name: QualifiedName,
    pub relkind: String,
}

/// A relation known by its oid (one a catalog query found).
pub async fn resolve_relation_by_oid(
    client: &impl GenericClient,
    relid: u32,
) -> Result<Relation, ClusterError> {
    let row = client
        .query_one(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1",
            &[&relid],
        )
        .await
        .context(|| format!("looking up relation {relid}"))?;
    Ok(Relation {
        relid: row.get(0),
        name: QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
        relkind: row.get(3),
    })
}

pub async fn resolve_relation(
    client: &impl GenericClient,
    text: &str,
) -> Result<Relation, ClusterError> {
    // to_regclass parses the name as SQL would (quotes, case folding) and returns NULL for a
    // missing relation; a malformed name raises, which is reported the same way.
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&text],
        )
        .await;
    match row {
        Ok(Some(row)) => Ok(Relation {
            relid: row.get(0),
            name: QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
            relkind: row.get(3),
        }),
        Ok(None) => Err(ClusterError::UnknownTable(text.to_string())),
        Err(e) if e.as_db_error().is_some() => Err(ClusterError::UnknownTable(text.to_string())),
        Err(e) => Err(e).context(|| format!("looking up table {text}")),
    }
}

/// A column name as SQL reads it: `Id` is `id`, `"Id"` is `Id` (PostgreSQL's own `parse_ident`
/// decides, so quoting rules are exactly SQL's).
pub async fn resolve_column_name(
    client: &impl GenericClient,
    text: &str,
) -> Result<String, ClusterError> {
    let parts: Result<Vec<String>, _> = client
        .query_one("SELECT pg_catalog.parse_ident($1)::text[]", &[&text])
        .await
        .map(|row| row.get(0));
    match parts {
        Ok(parts) if parts.len() == 1 => Ok(parts.into_iter().next().expect("one part")),
        Ok(_) => Err(ClusterError::BadColumnName(text.to_string())),
        Err(e) if e.as_db_error().is_some() => Err(ClusterError::BadColumnName(text.to_string())),
        Err(e) => Err(e).context(|| format!("reading column name {text}")),
    }
}

/// A schema by its SQL name; returns its oid and exact name.
pub async fn resolve_schema(
    client: &impl GenericClient,
    text: &str,
) -> Result<(u32, String), ClusterError> {
    let row = client
        .query_opt(
            "SELECT n.oid, n.nspname::text FROM pg_catalog.pg_namespace n
             WHERE n.oid = pg_catalog.to_regnamespace($1)",
            &[&text],
        )
        .await;
    match row {
        Ok(Some(row)) => Ok((row.get(0), row.get(1))),
        Ok(None) => Err(ClusterError::UnknownSchema(text.to_string())),
        Err(e) if e.as_db_error().is_some() => Err(ClusterError::UnknownSchema(text.to_string())),
        Err(e) => Err(e).context(|| format!("looking up schema {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_refs() {
        assert_eq!(NodeRef::parse("3").unwrap(), NodeRef::Id(3));
        assert_eq!(
            NodeRef::parse("127.0.0.1:5433").unwrap(),
            NodeRef::Address {
                host: "127.0.0.1".into(),
                port: 5433
            }
        );
        assert_eq!(
            NodeRef::parse("[::1]:6000").unwrap(),
            NodeRef::Address {
                host: "::1".into(),
                port: 6000
            }
        );
        for bad in ["", "host", ":5432", "host:0", "host:70000", "host:x"] {
            assert!(NodeRef::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
