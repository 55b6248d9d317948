//! Deadlocks across nodes: two transactions that lock rows on two nodes in opposite orders wait
//! for each other on the nodes, where neither node's own detector sees a cycle. `shoal serve`
//! sees it, for sessions through the coordinator and through its endpoint alike, and fails the
//! transaction of the client that connected last; the other commits.

mod common;

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// `accounts` (8 shards, 100 rows of balance 1000) and two of its ids whose shards are on
/// different nodes.
async fn accounts_on_two_nodes(shoal: &common::Shoal) -> (i64, i64) {
    let coordinator = shoal.coordinator().await;
    coordinator
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    shoal.distribute("accounts", "id", "8").await;
    let mut first_on = std::collections::BTreeMap::new();
    for id in 1..=100i64 {
        let shard: String = coordinator
            .query_one(
                "SELECT tableoid::regclass::text FROM accounts WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        first_on
            .entry(shoal.worker_of_shard(&format!("public.{shard}")).await)
            .or_insert(id);
    }
    (first_on[&0], first_on[&1])
}

fn update(id: i64, by: i64) -> String {
    format!("UPDATE accounts SET balance = balance + {by} WHERE id = {id}")
}

/// How a transaction begins: on the path its first statement picks.
const BEGIN: &str = "BEGIN";
/// Through the endpoint, a block begun in one query string with another statement is the
/// coordinator's: its updates go through the coordinator's postgres_fdw.
const BEGIN_ON_COORDINATOR: &str = "BEGIN; SELECT count(*) FROM pg_catalog.pg_class";

/// `older` adds 1 to `a` then `b`, `younger` 10 to `b` then `a`, each in one transaction
/// begun with `begin` (older's, younger's), so that each ends up waiting for the other on the
/// other's node; each commits if its second update succeeds, rolls back otherwise. Their
/// second updates' results, older's first.
async fn deadlock(
    older: Client,
    younger: Client,
    (a, b): (i64, i64),
    begin: [&str; 2],
) -> (
    Result<(), tokio_postgres::Error>,
    Result<(), tokio_postgres::Error>,
) {
    older.batch_execute(begin[0]).await.unwrap();
    older.batch_execute(&update(a, 1)).await.unwrap();
    younger.batch_execute(begin[1]).await.unwrap();
    younger.batch_execute(&update(b, 10)).await.unwrap();
    let second = |client: Client, sql: String| {
        tokio::spawn(async move {
            let result = client.batch_execute(&sql).await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            client.batch_execute(end).await.unwrap();
            result
        })
    };
    let older = second(older, update(b, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let younger = second(younger, update(a, 10));
    let within = Duration::from_secs(20);
    let older = tokio::time::timeout(within, older)
        .await
        .expect("the older transaction ends")
        .unwrap();
    let younger = tokio::time::timeout(within, younger)
        .await
        .expect("the younger transaction ends")
        .unwrap();
    (older, younger)
}

/// Only the older transaction's changes are there, on both nodes.
async fn assert_only_older_applied(shoal: &common::Shoal, (a, b): (i64, i64)) {
    let balances: Vec<i64> = shoal
        .coordinator()
        .await
        .query(
            "SELECT balance FROM accounts WHERE id = ANY($1) ORDER BY id = $2 DESC",
            &[&vec![a, b], &a],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(balances, [1001, 1001]);
}

/// Through the endpoint the victim's statement fails with `deadlock detected` (40P01), as on
/// one server.
fn assert_deadlock_detected(error: &tokio_postgres::Error) {
    assert_eq!(
        error.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED),
        "{error:?}"
    );
    let db = error.as_db_error().expect("a server error");
    assert_eq!(db.message(), "deadlock detected");
    assert!(
        db.detail().unwrap_or("").contains("another server"),
        "{db:?}"
    );
}

#[tokio::test]
async fn a_deadlock_across_nodes_through_the_endpoint_fails_one_transaction_as_postgresql_does() {
    let shoal = common::start(2).await;
    let ids = accounts_on_two_nodes(&shoal).await;
    let endpoint = shoal.start_endpoint().await;
    let (older, younger) = (endpoint.connect().await, endpoint.connect().await);
    let (older, younger) = deadlock(older, younger, ids, [BEGIN, BEGIN]).await;
    older.expect("the older transaction commits");
    assert_deadlock_detected(&younger.expect_err("the younger transaction is the victim"));
    assert_eq!(
        endpoint.metrics().await["shoal_endpoint_deadlocks_broken_total"],
        1
    );
    assert_only_older_applied(&shoal, ids).await;
}

/// Through the coordinator PostgreSQL gives no way to fail another session's statement with
/// 40P01: the victim's statement is cancelled on the node (57014, with the remote statement in
/// the context).
#[tokio::test]
async fn a_deadlock_across_nodes_through_the_coordinator_is_broken_by_shoal_serve() {
    let shoal = common::start(2).await;
    let ids = accounts_on_two_nodes(&shoal).await;
    let daemon = shoal.start_daemon().await;
    let (older, younger) = (shoal.coordinator().await, shoal.coordinator().await);
    let (older, younger) = deadlock(older, younger, ids, [BEGIN, BEGIN]).await;
    older.expect("the older transaction commits");
    let error = younger.expect_err("the younger transaction is the victim");
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    assert_eq!(
        daemon.metrics().await["shoal_coordinator_deadlocks_broken_total"],
        1
    );
    assert_only_older_applied(&shoal, ids).await;
}

/// A session through the coordinator, then one through the endpoint begun with `begin`,
/// deadlocked with each other: the endpoint's, whose client connected last, fails with 40P01,
/// counted as the endpoint's.
async fn coordinator_session_then_endpoint_session(begin: &str) {
    let shoal = common::start(2).await;
    let ids = accounts_on_two_nodes(&shoal).await;
    let endpoint = shoal.start_endpoint().await;
    let older = shoal.coordinator().await;
    // Later by far more than clocks disagree between the coordinator and this process.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let younger = endpoint.connect().await;
    let (older, younger) = deadlock(older, younger, ids, [BEGIN, begin]).await;
    older.expect("the coordinator's transaction commits");
    assert_deadlock_detected(&younger.expect_err("the endpoint's transaction is the victim"));
    let metrics = endpoint.metrics().await;
    assert_eq!(metrics["shoal_endpoint_deadlocks_broken_total"], 1);
    assert_eq!(metrics["shoal_coordinator_deadlocks_broken_total"], 0);
    assert_only_older_applied(&shoal, ids).await;
}

#[tokio::test]
async fn a_deadlock_between_an_endpoint_session_and_a_coordinator_session_is_broken() {
    coordinator_session_then_endpoint_session(BEGIN).await;
}

/// An endpoint session whose transaction is on the coordinator's path (its updates reach the
/// nodes through the coordinator's postgres_fdw) is still the endpoint's.
#[tokio::test]
async fn an_endpoint_transaction_on_the_coordinators_path_fails_with_deadlock_detected() {
    coordinator_session_then_endpoint_session(BEGIN_ON_COORDINATOR).await;
}
