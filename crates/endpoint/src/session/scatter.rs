//! Reads over every shard, through the endpoint (`shoal_route::scatter`): each node
//! aggregates its shards on a few of Shoal's connections (`Options::scatter_connections`,
//! each with a share of the shards), all nodes at once, and the client's
//! coordinator session merges the partial rows, so the client gets PostgreSQL's own types,
//! names and output. Outside a transaction block whatever fails before the merge leaves the
//! statement to the coordinator, nothing having reached the client. In a transaction block
//! that runs on its participants (READ COMMITTED), each node's part runs on the
//! transaction's own connection there (joining the node first), so it sees the transaction's
//! writes; the coordinator could not (its postgres_fdw transaction does not see them).

use std::sync::Arc;

use bytes::Bytes;

use super::{lost, Dest, Session};
use crate::error::{EndpointError, ServerError};
use crate::server::RowLimit;
use crate::transaction::{Need, Path, Step};
use shoal_route::{Place, Placement, Privilege, Scatter};

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
        let Some(parameters) = shared_parameters(scatter, parameters) else {
            return Ok(None);
        };
        if !self.may_read(scatter).await? {
            return Ok(None);
        }
        let mut running = Vec::new();
        let connections = self.shared.options.scatter_connections;
        for (node, sql) in scatter.per_connection(connections) {
            let place = Place::Node(node);
            let mut pooled = match self.shared.pool.get(place).await {
                Ok(pooled) => pooled,
                Err(_) => return Ok(None),
            };
            let values = self.settings.split_read_values();
            let settings = super::settings::apply_sql(&values, &pooled.settings);
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
                    None => {
                        let limit = RowLimit::Abandon(MAX_PARTIAL_ROWS);
                        pooled.conn.simple_query_typed(&sql, limit).await
                    }
                    Some(p) => {
                        pooled
                            .conn
                            .extended_query_typed(
                                &sql,
                                &p.types,
                                &p.values,
                                &p.formats,
                                RowLimit::Abandon(MAX_PARTIAL_ROWS),
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
        let Some(names) = type_names(&oids) else {
            return Ok(None);
        };
        self.shared.metrics.scattered();
        Ok(Some(scatter.merge_sql(&names, &rows)))
    }

    async fn may_read(&mut self, scatter: &Scatter) -> Result<bool, EndpointError> {
        for table in &scatter.tables {
            if !self.may(table, Privilege::Select).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Session::gather`] in a transaction block on its participants: each node's part on the
    /// transaction's connection there, all nodes at once. Nothing to split outside such a
    /// block, or before its path is chosen (it then takes the coordinator's, as before).
    pub(super) async fn gather_in_transaction(
        &mut self,
        scatter: &Scatter,
        parameters: Option<&Parameters>,
    ) -> Result<InTransaction, EndpointError> {
        if !matches!(&self.txn, Some(t) if matches!(t.path, Path::Participants(_)) && !t.failed) {
            return Ok(InTransaction::NotSplit);
        }
        let Some(parameters) = shared_parameters(scatter, parameters) else {
            return Ok(InTransaction::NotSplit);
        };
        if !self.may_read(scatter).await? {
            return Ok(InTransaction::NotSplit);
        }
        let topology = self.topology();
        let reads_reference = scatter.tables.iter().any(|table| {
            matches!(
                topology.tables.get(table).map(|t| &t.placement),
                Some(Placement::Reference { .. })
            )
        });
        let mut parts = Vec::new();
        for (node, sql) in scatter.per_connection(1) {
            let place = Place::Node(node);
            let need = Need::Participant {
                place,
                reads_reference_replica: reads_reference,
                writes_reference: false,
            };
            let txn = self.txn.as_mut().expect("a transaction");
            match txn.route(need, "") {
                Err(error) => return Ok(InTransaction::Refused(error)),
                Ok(Step::Participant { join: true, .. }) => {
                    if let Err(error) = self.join(place).await? {
                        return Ok(InTransaction::Refused(error));
                    }
                }
                Ok(_) => {
                    if let Err(error) = self.hold(place).await {
                        return Ok(InTransaction::Refused(super::connect_failure(
                            place, &error,
                        )));
                    }
                }
            }
            parts.push((place, sql));
        }
        let mut running = Vec::new();
        for (place, sql) in parts {
            let mut pooled = self
                .held
                .remove(&place)
                .expect("a participant's connection");
            let parameters = parameters.clone();
            running.push(tokio::spawn(async move {
                // Read to the end whatever comes: the connection is the transaction's.
                let limit = RowLimit::Drain(MAX_PARTIAL_ROWS);
                let result = match &parameters {
                    None => pooled.conn.simple_query_typed(&sql, limit).await,
                    Some(p) => {
                        pooled
                            .conn
                            .extended_query_typed(&sql, &p.types, &p.values, &p.formats, limit)
                            .await
                    }
                };
                (place, pooled, result)
            }));
        }
        let (mut types, mut rows, mut refused) = (None, Vec::new(), None);
        for task in running {
            let (place, pooled, result) = task.await.expect("a split read's part does not panic");
            self.held.insert(place, pooled);
            match result {
                Ok((oids, partial)) => {
                    types.get_or_insert(oids);
                    rows.extend(partial);
                }
                Err(EndpointError::TooManyRows(max)) => {
                    refused.get_or_insert(
                        ServerError::new(
                            "54000",
                            format!(
                                "this read, split across the shards in a transaction block,                                  brings back more than {max} rows from {}",
                                super::place_name(place)
                            ),
                        )
                        .with_hint(
                            "Run it outside the transaction block (the coordinator then answers                              it whole), or narrow it with WHERE or LIMIT.",
                        ),
                    );
                }
                Err(error) => {
                    refused.get_or_insert(lost(place, &error));
                }
            }
        }
        if let Some(error) = refused {
            return Ok(InTransaction::Refused(error));
        }
        let names = types.as_deref().and_then(type_names);
        let Some(names) = names else {
            return Ok(InTransaction::Refused(ServerError::new(
                "0A000",
                "this read, split across the shards in a transaction block, returns a column                  type Shoal's endpoint cannot merge",
            )
            .with_hint("Run it outside the transaction block, or cast the column to text.")));
        };
        self.shared.metrics.scattered();
        Ok(InTransaction::Merge(scatter.merge_sql(&names, &rows)))
    }

    /// A simple query split across shards; `false` when it was left to the caller.
    pub(super) async fn scatter_simple(
        &mut self,
        scatter: &Scatter,
    ) -> Result<bool, EndpointError> {
        let outcome = if self.txn.is_none() {
            match self.gather(scatter, None).await? {
                Some(merge) => InTransaction::Merge(merge),
                None => InTransaction::NotSplit,
            }
        } else {
            self.gather_in_transaction(scatter, None).await?
        };
        match outcome {
            InTransaction::Merge(merge) => {
                self.relay_simple(Dest::Session, &merge).await?;
                Ok(true)
            }
            InTransaction::Refused(error) => {
                self.local_error(error).await?;
                Ok(true)
            }
            InTransaction::NotSplit => Ok(false),
        }
    }
}

/// What a split read in a transaction block came to.
pub(super) enum InTransaction {
    /// The merging statement, for the coordinator session.
    Merge(String),
    /// The transaction's answer: an error (the transaction is then failed, as PostgreSQL's is).
    Refused(ServerError),
    /// Nothing was run: the statement goes where it would have gone.
    NotSplit,
}

/// The client's parameters, shared by the parts; `None` when the statement needs parameters
/// and none came (a simple query cannot split it).
fn shared_parameters(
    scatter: &Scatter,
    given: Option<&Parameters>,
) -> Option<Option<Arc<Parameters>>> {
    match (scatter.parameters, given) {
        (true, None) => None,
        (true, Some(given)) => Some(Some(Arc::new(Parameters {
            types: given.types.clone(),
            values: given.values.clone(),
            formats: given.formats.clone(),
        }))),
        (false, _) => Some(None),
    }
}

fn type_names(oids: &[u32]) -> Option<Vec<String>> {
    oids.iter()
        .map(|oid| type_name(*oid).map(String::from))
        .collect()
}
