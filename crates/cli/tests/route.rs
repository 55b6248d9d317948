//! The router on a real cluster: statements it sends to a node, rewritten, return there what
//! the coordinator returns for the original, and its writes are the coordinator's rows.

mod common;

use common::Shoal;
use shoal_catalog::model;
use shoal_route::{plan, Param};

async fn setup() -> Shoal {
    let shoal = common::start(2).await;
    let sql = shoal.coordinator().await;
    sql.batch_execute(
        r#"CREATE TABLE kinds (id int PRIMARY KEY, name text);
           INSERT INTO kinds SELECT g, 'kind ' || g FROM generate_series(0, 4) g;
           CREATE TABLE orders (customer_id bigint, id int, amount numeric,
                                status text DEFAULT 'new', PRIMARY KEY (customer_id, id));
           INSERT INTO orders SELECT g % 50, g, g * 1.5, 'paid' FROM generate_series(1, 400) g;
           CREATE TABLE items (customer_id bigint, order_id int, kind int REFERENCES kinds, qty int);
           INSERT INTO items SELECT g % 50, g, g % 5, g % 7 FROM generate_series(1, 400) g;
           CREATE SCHEMA "my shop";
           CREATE TABLE "my shop"."Order ""Items""" ("Id" text PRIMARY KEY, note text);
           INSERT INTO "my shop"."Order ""Items""" SELECT 'k' || g, 'n' || g FROM generate_series(1, 100) g;
           CREATE SCHEMA tenant;
           CREATE TABLE tenant.users (id int PRIMARY KEY, name text);
           INSERT INTO tenant.users SELECT g, 'u' || g FROM generate_series(1, 20) g;"#,
    )
    .await
    .unwrap();
    shoal
        .cli(&["table", "reference", "kinds"])
        .await
        .assert_ok();
    for args in [
        &[
            "table",
            "distribute",
            "orders",
            "--column",
            "customer_id",
            "--shards",
            "8",
        ][..],
        &[
            "table",
            "distribute",
            "items",
            "--column",
            "customer_id",
            "--colocate-with",
            "orders",
        ],
        &[
            "table",
            "distribute",
            r#""my shop"."Order ""Items""""#,
            "--column",
            r#""Id""#,
            "--shards",
            "4",
        ],
        &["schema", "distribute", "tenant"],
    ] {
        shoal.cli(args).await.assert_ok();
    }
    shoal
}

/// Rows as text, sorted: what a query returned, comparable across servers.
async fn rows(client: &tokio_postgres::Client, sql: &str, params: &[i64]) -> Vec<String> {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let wrapped = format!("SELECT t::text FROM ({sql}) t");
    let mut out: Vec<String> = client
        .query(&wrapped, &params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn routed_statements_answer_on_their_node_as_the_coordinator_does() {
    let shoal = setup().await;
    let coordinator = shoal.coordinator().await;
    let topology = shoal_cluster::topology::load_topology(&coordinator, vec!["public".into()])
        .await
        .unwrap();
    let nodes = model::list_nodes(&coordinator).await.unwrap();
    let reads: [(&str, &[i64]); 6] = [
        ("SELECT id, amount, status FROM orders WHERE customer_id = 7", &[]),
        ("SELECT id FROM orders WHERE customer_id = $1 AND amount > 100", &[7]),
        (
            "SELECT o.id, i.qty, k.name FROM orders o JOIN items i ON i.customer_id = o.customer_id \
             AND i.order_id = o.id JOIN kinds k ON k.id = i.kind WHERE o.customer_id = 13",
            &[],
        ),
        (
            "SELECT customer_id, count(*), sum(qty) FROM items JOIN orders USING (customer_id) \
             WHERE customer_id = 21 GROUP BY customer_id",
            &[],
        ),
        (r#"SELECT note FROM "my shop"."Order ""Items""" WHERE "Id" = 'k42'"#, &[]),
        ("SELECT name FROM tenant.users WHERE id > 5", &[]),
    ];
    for (sql, params) in reads {
        let texts: Vec<String> = params.iter().map(i64::to_string).collect();
        let bound: Vec<Param<'_>> = texts.iter().map(|p| Param::Text(p)).collect();
        let target = plan(sql, &topology)
            .and_then(|p| p.bind(&bound, &topology))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let node = nodes
            .iter()
            .find(|n| shoal_route::Place::Node(n.node_id) == target.place)
            .unwrap();
        let on_node = shoal.cluster.node_client(node, "test route").await.unwrap();
        let expected = rows(&coordinator, sql, params).await;
        assert!(!expected.is_empty(), "{sql} returns rows");
        assert_eq!(rows(&on_node, &target.sql, params).await, expected, "{sql}");
    }

    // A write sent to the node is the coordinator's row, in the right shard.
    let insert =
        "INSERT INTO orders (customer_id, id, amount, status) VALUES ($1, 9001, 1, 'routed')";
    let target = plan(insert, &topology)
        .and_then(|p| p.bind(&[Param::Text("33")], &topology))
        .unwrap();
    let node = nodes
        .iter()
        .find(|n| shoal_route::Place::Node(n.node_id) == target.place)
        .unwrap();
    let on_node = shoal.cluster.node_client(node, "test route").await.unwrap();
    on_node.execute(&target.sql, &[&33i64]).await.unwrap();
    let status: String = coordinator
        .query_one(
            "SELECT status FROM orders WHERE customer_id = 33 AND id = 9001",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "routed");
    // PostgreSQL's own routing agrees: the row is in the partition of the shard picked.
    let partition: String = coordinator
        .query_one(
            "SELECT tableoid::regclass::text FROM orders WHERE customer_id = 33 AND id = 9001",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let shard = model::all_placements(&coordinator)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.shard_table.name == partition.trim_matches('"').trim_start_matches("public."))
        .unwrap();
    assert_eq!(shard.shard_index as u32, target.shard_index);
    shoal.assert_nothing_left_behind().await;

    // A view earlier on the search path is what the name means: never routed.
    coordinator
        .batch_execute(
            "CREATE SCHEMA shadow; CREATE VIEW shadow.orders AS SELECT * FROM public.orders",
        )
        .await
        .unwrap();
    let shadowed = shoal_cluster::topology::load_topology(
        &coordinator,
        vec!["shadow".into(), "public".into()],
    )
    .await
    .unwrap();
    let lookup = "SELECT id FROM orders WHERE customer_id = 7";
    assert!(plan(lookup, &shadowed).is_err());
    assert!(plan(
        "SELECT id FROM public.orders WHERE customer_id = 7",
        &shadowed
    )
    .is_ok());
}
