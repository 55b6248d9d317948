//! All or nothing across servers. A transaction that wrote on several servers prepares on
//! each node (`PREPARE TRANSACTION`), then commits on the coordinator's participant with the
//! decision row written inside it (the coordinator is the last to decide, so its commit is
//! the decision), or, with no coordinator participant, records the decision in a transaction
//! of its own; then every node commits its prepared part. After a crash anywhere, recovery
//! commits the prepared parts whose decision is recorded and rolls back the rest, once their
//! endpoint is gone (it holds an advisory lock for its lifetime), after recording that
//! decision: the decision row's key makes a late commit and recovery exclude each other.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::error::EndpointError;
/// Advisory lock class of endpoint instances (`pg_advisory_lock(CLASS, instance)`).
pub use shoal_cluster::fence::INSTANCE_LOCK_CLASS;
use shoal_route::Place;

/// The id of a transaction: `shoal:<instance>:<serial>`.
pub fn transaction_id(instance: i32, serial: u64) -> String {
    format!("shoal:{instance}:{serial}")
}

/// The prepared transaction of one participant.
pub fn participant_gid(transaction: &str, place: Place) -> String {
    match place {
        Place::Coordinator => format!("{transaction}:c"),
        Place::Node(id) => format!("{transaction}:{id}"),
    }
}

/// A prepared transaction's id split into its transaction and instance, if Shoal's.
pub fn parse_gid(gid: &str) -> Option<(String, i32)> {
    let mut parts = gid.split(':');
    let (Some("shoal"), Some(instance), Some(serial), Some(_place), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let instance: i32 = instance.parse().ok()?;
    serial.parse::<u64>().ok()?;
    Some((format!("shoal:{instance}:{serial}"), instance))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Rollback,
    /// Its endpoint is alive and may still decide.
    Leave,
}

/// What recovery does with a prepared part.
pub fn resolve(decided: bool, owner_alive: bool) -> Resolution {
    match (owner_alive, decided) {
        (true, _) => Resolution::Leave,
        (false, true) => Resolution::Commit,
        (false, false) => Resolution::Rollback,
    }
}

/// One pass of recovery over the servers (Shoal's connections; `every_server` false when some
/// could not be reached, so that no decision they may still need is removed). A transaction of this
/// endpoint (`instance`) may still be decided while `in_flight` says so; another endpoint's
/// while it holds its advisory lock. Returns how many prepared parts were committed and
/// rolled back.
pub async fn recover(
    coordinator: &Client,
    servers: &[(Place, &Client)],
    every_server: bool,
    instance: i32,
    in_flight: &(dyn Fn(&str) -> bool + Send + Sync),
) -> Result<(u64, u64), EndpointError> {
    let mut prepared: BTreeMap<String, Vec<(Place, String)>> = BTreeMap::new();
    let mut unreachable = !every_server;
    for (place, client) in servers {
        let rows = match client
            .query(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts
                 WHERE gid LIKE 'shoal:%' AND database = current_database()",
                &[],
            )
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(?place, %error, "recovery could not list prepared transactions");
                unreachable = true;
                continue;
            }
        };
        for row in rows {
            let gid: String = row.get(0);
            if let Some((transaction, _)) = parse_gid(&gid) {
                prepared.entry(transaction).or_default().push((*place, gid));
            }
        }
    }
    let decisions: BTreeMap<String, bool> = coordinator
        .query(
            "SELECT transaction_id, committed FROM shoal.commit_decision",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut live = BTreeMap::new();
    let instances: BTreeSet<i32> = prepared
        .keys()
        .chain(decisions.keys())
        .filter_map(|t| t.split(':').nth(1).and_then(|i| i.parse().ok()))
        .collect();
    for other in instances {
        let alive = if other == instance {
            true
        } else {
            let row = coordinator
                .query_one(
                    "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
                    &[&INSTANCE_LOCK_CLASS, &other],
                )
                .await?;
            let acquired: bool = row.get(0);
            if acquired {
                coordinator
                    .execute(
                        "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
                        &[&INSTANCE_LOCK_CLASS, &other],
                    )
                    .await?;
            }
            !acquired
        };
        live.insert(other, alive);
    }
    let alive = |transaction: &str, owner: i32| {
        if owner == instance {
            in_flight(transaction)
        } else {
            live.get(&owner).copied().unwrap_or(false)
        }
    };
    let (mut committed, mut rolled_back) = (0, 0);
    for (transaction, parts) in &prepared {
        let Some((_, owner)) = parse_gid(&parts[0].1) else {
            continue;
        };
        if alive(transaction, owner) {
            continue;
        }
        let decided = match decisions.get(transaction) {
            Some(committed) => *committed,
            None => decide_rollback(coordinator, transaction).await?,
        };
        let action = resolve(decided, false);
        let verb = match action {
            Resolution::Leave => continue,
            Resolution::Commit => "COMMIT PREPARED",
            Resolution::Rollback => "ROLLBACK PREPARED",
        };
        for (place, gid) in parts {
            let Some((_, client)) = servers.iter().find(|(p, _)| p == place) else {
                continue;
            };
            let sql = format!("{verb} {}", shoal_sql::quote_literal(gid));
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(gid, action = verb, "resolved an in-doubt transaction");
                    if action == Resolution::Commit {
                        committed += 1;
                    } else {
                        rolled_back += 1;
                    }
                }
                // Another endpoint's recovery may have been first.
                Err(error) => tracing::debug!(gid, %error, "resolving a prepared transaction"),
            }
        }
    }
    // A decision is kept while any part may still be prepared somewhere.
    if !unreachable {
        for transaction in decisions.keys().filter(|t| !prepared.contains_key(*t)) {
            let owner = transaction
                .split(':')
                .nth(1)
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            if !alive(transaction, owner) {
                coordinator
                    .execute(
                        "DELETE FROM shoal.commit_decision WHERE transaction_id = $1",
                        &[transaction],
                    )
                    .await?;
            }
        }
    }
    Ok((committed, rolled_back))
}

/// Records the decision to roll back a transaction nobody decided, unless its commit got there
/// first (the primary key orders the two: a commit in progress makes this wait for it).
/// Returns whether the transaction committed.
async fn decide_rollback(coordinator: &Client, transaction: &str) -> Result<bool, EndpointError> {
    coordinator
        .execute(
            "INSERT INTO shoal.commit_decision (transaction_id, participants, committed)
             VALUES ($1, '{}', false) ON CONFLICT (transaction_id) DO NOTHING",
            &[&transaction],
        )
        .await?;
    let row = coordinator
        .query_one(
            "SELECT committed FROM shoal.commit_decision WHERE transaction_id = $1",
            &[&transaction],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_the_transaction_its_endpoint_and_the_participant() {
        let transaction = transaction_id(77, 12);
        assert_eq!(transaction, "shoal:77:12");
        let gid = participant_gid(&transaction, Place::Node(3));
        assert_eq!(gid, "shoal:77:12:3");
        assert_eq!(parse_gid(&gid), Some((transaction.clone(), 77)));
        assert_eq!(
            parse_gid(&participant_gid(&transaction, Place::Coordinator)),
            Some((transaction, 77))
        );
        for other in [
            "shoal:77:12",
            "pgbench:1:2:3",
            "shoal:x:1:2",
            "shoal:1:2:3:4",
            "",
        ] {
            assert_eq!(parse_gid(other), None, "{other}");
        }
    }

    #[test]
    fn recovery_commits_only_what_was_decided_and_waits_for_live_endpoints() {
        assert_eq!(resolve(true, false), Resolution::Commit);
        assert_eq!(resolve(false, false), Resolution::Rollback);
        assert_eq!(resolve(true, true), Resolution::Leave);
        assert_eq!(resolve(false, true), Resolution::Leave);
    }
}
