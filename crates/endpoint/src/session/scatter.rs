//! Reads over every shard, through the endpoint (`shoal_route::scatter`): each node
//! aggregates its shards on a few of Shoal's connections (`Options::scatter_connections`,
//! each with a share of the shards), all nodes at once, and the client's
//! coordinator session merges the partial rows, so the client gets PostgreSQL's own types,
//! names and output. Taken only outside transaction blocks; whatever fails before the merge
//! leaves the statement to the coordinator, nothing having reached the client.

use std::sync::Arc;

use bytes::Bytes;

use super::{Dest, Session};
use crate::error::EndpointError;
use shoal_route::{Place, Privilege, Scatter};

/// Partial rows per node a split read may bring back: the merge takes them as one VALUES list
/// on the coordinator session, so a larger answer (grouping by a near-unique column without
/// LIMIT) goes to the coordinator instead, which streams it. One connection alone may not
/// read more either.
const MAX_PARTIAL_ROWS: usize = 20_000;

/// Type names of the OIDs partial columns can have (built-in, fixed in every PostgreSQL).
fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        700 => "real",
        701 => "double precision",
        790 => "money",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        _ => return None,
    })
}

/// A client's parameters for a split read: the types its Parse declared (0 where the server
/// infers them) and the values of its Bind, in their formats.
pub(super) struct Parameters {
    pub types: Vec<u32>,
    pub values: Vec<Option<Bytes>>,
    pub formats: Vec<i16>,
}

impl Session {
    /// The merging statement for `scatter`, once every node answered; `None` when the
    /// coordinator should run the statement instead.
    pub(super) async fn gather(
        &mut self,
        scatter: &Scatter,
        parameters: Option<&Parameters>,
    ) -> Result<Option<String>, EndpointError> {
        let parameters = match (scatter.parameters, parameters) {
            (true, None) => return Ok(None),
            (true, Some(given)) => Some(Arc::new(Parameters {
                types: given.types.clone(),
                values: given.values.clone(),
                formats: given.formats.clone(),
            })),
            (false, _) => None,
        };
        for table in &scatter.tables {
            if !self.may(table, Privilege::Select).await? {
                return Ok(None);
            }
        }
        let mut running = Vec::new();
        let connections = self.shared.options.scatter_connections;
        for (node, sql) in scatter.per_connection(connections) {
            let place = Place::Node(node);
            let mut pooled = match self.shared.pool.get(place).await {
                Ok(pooled) => pooled,
                Err(_) => return Ok(None),
            };
            let settings = self.settings.apply_sql(&pooled.settings);
            let values = self.settings.values.clone();
            let parameters = parameters.clone();
            running.push(tokio::spawn(async move {
                if let Some(apply) = settings {
                    if let Err(error) = pooled.conn.simple_query(&apply).await {
                        pooled.reusable = false;
                        return (place, pooled, Err(error));
                    }
                    pooled.settings = values;
                }
                let result = match &parameters {
                    None => pooled.conn.simple_query_typed(&sql, MAX_PARTIAL_ROWS).await,
                    Some(p) => {
                        pooled
                            .conn
                            .extended_query_typed(
                                &sql,
                                &p.types,
                                &p.values,
                                &p.formats,
                                MAX_PARTIAL_ROWS,
                            )
                            .await
                    }
                };
                (place, pooled, result)
            }));
        }
        let (mut types, mut rows, mut failed) = (None, Vec::new(), false);
        for task in running {
            let Ok((place, mut pooled, result)) = task.await else {
                failed = true;
                continue;
            };
            match result {
                Ok((oids, partial)) => {
                    types.get_or_insert(oids);
                    rows.extend(partial);
                }
                Err(error) => {
                    tracing::debug!(?place, %error, "a node could not answer its part");
                    pooled.reusable = !matches!(
                        error,
                        EndpointError::Io(_)
                            | EndpointError::Closed
                            | EndpointError::TooManyRows(_)
                    );
                    failed = true;
                }
            }
            self.shared.pool.put(place, pooled);
        }
        let nodes = scatter.shard_statements.len().max(1);
        let Some(oids) = types.filter(|_| !failed && rows.len() <= MAX_PARTIAL_ROWS * nodes) else {
            return Ok(None);
        };
        let Some(names) = oids
            .iter()
            .map(|oid| type_name(*oid).map(String::from))
            .collect::<Option<Vec<String>>>()
        else {
            return Ok(None);
        };
        self.shared.metrics.scattered();
        Ok(Some(scatter.merge_sql(&names, &rows)))
    }

    /// A simple query split across shards; `false` when it was left to the caller.
    pub(super) async fn scatter_simple(
        &mut self,
        scatter: &Scatter,
    ) -> Result<bool, EndpointError> {
        match self.gather(scatter, None).await? {
            Some(merge) => {
                self.relay_simple(Dest::Session, &merge).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
