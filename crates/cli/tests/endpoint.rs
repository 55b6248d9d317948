//! Shoal's endpoint: applications connect to it like to the coordinator; statements one
//! shard group answers run on its node at the client's isolation level, transactions that
//! write on several servers commit with two-phase commit, everything else goes to the
//! coordinator.

mod common;

use common::endpoint::pgbench;

/// pgbench's schema with branches a reference table and accounts, tellers and history
/// distributed (history with accounts).
async fn pgbench_cluster(scale: &str) -> common::Shoal {
    let shoal = common::start(2).await;
    let init = pgbench(&shoal.pg.coordinator_uri(), &["-i", "-s", scale, "-q"]).await;
    assert!(init.output.contains("done"), "{}", init.output);
    shoal
        .cli(&["table", "reference", "pgbench_branches"])
        .await
        .assert_ok();
    for (table, column, colocate) in [
        ("pgbench_accounts", "aid", None),
        ("pgbench_tellers", "tid", None),
        ("pgbench_history", "aid", Some("pgbench_accounts")),
    ] {
        let mut args = vec![
            "table",
            "distribute",
            table,
            "--column",
            column,
            "--shards",
            "8",
        ];
        if let Some(with) = colocate {
            args.extend(["--colocate-with", with]);
        }
        shoal.cli(&args).await.assert_ok();
    }
    shoal
}

/// The sums pgbench's transactions keep equal, and the history's length.
async fn balances(sql: &tokio_postgres::Client) -> (i64, i64, i64, i64, i64) {
    let row = sql
        .query_one(
            "SELECT (SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts),
                    (SELECT coalesce(sum(tbalance), 0)::bigint FROM pgbench_tellers),
                    (SELECT coalesce(sum(bbalance), 0)::bigint FROM pgbench_branches),
                    (SELECT coalesce(sum(delta), 0)::bigint FROM pgbench_history),
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

#[tokio::test]
async fn tpc_b_through_the_endpoint_fails_nothing_and_keeps_its_balances() {
    let shoal = pgbench_cluster("2").await;
    let endpoint = shoal.start_endpoint().await;
    let sql = shoal.coordinator().await;
    let mut acknowledged = 0;
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(
            &endpoint.uri,
            &["-c", "4", "-j", "2", "-t", "60", "--no-vacuum", "-M", mode],
        )
        .await;
        assert_eq!(run.processed, 240, "{mode}:\n{}", run.output);
        assert_eq!(run.failed, 0, "{mode}:\n{}", run.output);
        acknowledged += run.processed as i64;
        let (accounts, tellers, branches, history, rows) = balances(&sql).await;
        assert_eq!(accounts, history, "{mode}");
        assert_eq!(tellers, history, "{mode}");
        assert_eq!(branches, history, "{mode}");
        assert_eq!(rows, acknowledged, "{mode}");
    }
    let metrics = endpoint.metrics().await;
    // Five statements a transaction, all routed; the branch update joins each transaction on
    // the coordinator, so every transaction commits with two-phase commit.
    assert!(
        metrics["shoal_endpoint_statements_routed_total"] >= 5 * 720,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["shoal_endpoint_two_phase_commits_total"], 720,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["shoal_endpoint_statements_refused_total"], 0,
        "{metrics:?}"
    );
    // Nothing is left prepared anywhere.
    for server in shoal.pg.servers() {
        let client = server.connect().await;
        let prepared: i64 = client
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(prepared, 0);
    }
}
