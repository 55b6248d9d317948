//! `CREATE INDEX CONCURRENTLY` and `DROP INDEX CONCURRENTLY` on Shoal's tables, which the
//! coordinator refuses (PostgreSQL cannot build an index concurrently on a partitioned
//! table): the endpoint runs them as `shoal ddl` does, concurrently on every shard and then
//! recorded, so a migration that uses them runs through the endpoint unchanged.

use super::{complete, Dest, Session};
use crate::error::{EndpointError, ServerError};
use shoal_route::Placement;
use shoal_sql::{quote_ident, quote_literal, QualifiedName};

impl Session {
    /// Runs the statement if it concerns a table of Shoal's; `false` when the coordinator
    /// session should take it as written.
    pub(super) async fn concurrent_index(
        &mut self,
        create: bool,
        schema: &str,
        name: &str,
        sql: &str,
    ) -> Result<bool, EndpointError> {
        if self.txn.is_some() {
            // PostgreSQL's own refusal inside a transaction block.
            return Ok(false);
        }
        let Some(table) = self.managed_table(create, schema, name).await? else {
            return Ok(false);
        };
        self.settle(Dest::Session).await?;
        let owner = format!(
            "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c
             WHERE c.oid = pg_catalog.to_regclass({})",
            quote_literal(&table.quoted())
        );
        let owns = self.coordinator.simple_query(&owner).await?;
        if !matches!(owns.as_slice(), [row] if row[0].as_deref() == Some("t")) {
            let error = ServerError::new("42501", format!("must be owner of table {}", table.name));
            self.local_error(error).await?;
            return Ok(true);
        }
        let outcome = self.apply_ddl(sql).await;
        match outcome {
            Ok(()) => {
                let tag = if create { "CREATE INDEX" } else { "DROP INDEX" };
                self.local(complete(tag)).await?;
            }
            Err(error) => self.local_error(error).await?,
        }
        Ok(true)
    }

    /// The distributed (or reference, or schema) table the statement concerns, if any.
    async fn managed_table(
        &mut self,
        create: bool,
        schema: &str,
        name: &str,
    ) -> Result<Option<QualifiedName>, EndpointError> {
        let (schema, table) = if create {
            (schema.to_string(), name.to_string())
        } else {
            // The index's table, as the client's session resolves the index's name.
            let index = if schema.is_empty() {
                quote_ident(name)
            } else {
                format!("{}.{}", quote_ident(schema), quote_ident(name))
            };
            self.settle(Dest::Session).await?;
            let rows = self
                .coordinator
                .simple_query(&format!(
                    "SELECT n.nspname, c.relname FROM pg_catalog.pg_index i
                     JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE i.indexrelid = pg_catalog.to_regclass({})",
                    quote_literal(&index)
                ))
                .await?;
            match rows.as_slice() {
                [row] => (
                    row[0].clone().unwrap_or_default(),
                    row[1].clone().unwrap_or_default(),
                ),
                _ => return Ok(None),
            }
        };
        let topology = self.topology();
        Ok(topology
            .resolve(&schema, &table)
            .filter(|(_, t)| !matches!(t.placement, Placement::Local))
            .map(|(name, _)| name))
    }

    /// `shoal ddl`'s way, as Shoal's role, with the client's search path.
    async fn apply_ddl(&self, sql: &str) -> Result<(), ServerError> {
        let params = &self.shared.coordinator;
        let failed = |e: &dyn std::fmt::Display| ServerError::new("XX000", e.to_string());
        let mut client = shoal_catalog::connect(params, "shoal endpoint ddl")
            .await
            .map_err(|e| failed(&e))?;
        let path: Vec<String> = self.search_path.iter().map(|s| quote_ident(s)).collect();
        if !path.is_empty() {
            client
                .batch_execute(&format!("SET search_path = {}", path.join(", ")))
                .await
                .map_err(|e| failed(&e))?;
        }
        match shoal_ddl::apply(params, &mut client, sql).await {
            Ok(_) => Ok(()),
            Err(shoal_ddl::DdlError::Postgres {
                source,
                what,
                message,
            }) => {
                let code = source.code().map_or("XX000", |c| c.code()).to_string();
                Err(ServerError::new(&code, format!("{what}: {message}")))
            }
            Err(other) => Err(failed(&other)),
        }
    }
}
