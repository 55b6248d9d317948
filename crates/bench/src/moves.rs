//! Move of one shard group (orders-like rows plus a colocated items table) vs a raw binary COPY
//! of the same rows with their primary keys, between the same two servers.

use std::time::Instant;

use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::median;
use shoal_catalog::ConnectParams;
use shoal_cluster::nodes::{self, AddNode};
use shoal_cluster::Cluster;
use shoal_testkit::TestCluster;
use shoal_transfer::{CancelToken, Mode, Operation, Transfer, TransferRequest, Tuning};

pub async fn shoal_on(pg: &TestCluster) -> anyhow::Result<Cluster> {
    let params = ConnectParams::parse(&pg.coordinator_uri())?;
    shoal_cluster::init_cluster(&params, "bench").await?;
    let cluster = Cluster::connect(params).await?;
    for worker in &pg.workers {
        let address = worker.host_port();
        nodes::add_node(
            &cluster,
            &AddNode {
                address: &address,
                dbname: None,
                should_have_shards: true,
            },
        )
        .await?;
    }
    Ok(cluster)
}

/// Creates `orders` and `order_items` with one shard each on the first worker and fills them
/// there (directly on the worker: the rows' way in is not what is measured), about `mb` MB in
/// all, two items per order as in the reference data set.
pub async fn one_group(
    pg: &TestCluster,
    cluster: &Cluster,
    mb: u64,
) -> anyhow::Result<(i64, Vec<String>)> {
    let sql = pg.coordinator.connect().await;
    sql.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric, note text);
         CREATE TABLE order_items (id bigint, order_id bigint, qty int, PRIMARY KEY (order_id, id));",
    )
    .await?;
    shoal_cluster::distribute_table(
        cluster,
        "orders",
        "id",
        Some(1),
        shoal_cluster::Colocate::None,
    )
    .await?;
    shoal_cluster::distribute_table(
        cluster,
        "order_items",
        "order_id",
        None,
        shoal_cluster::Colocate::With("orders".into()),
    )
    .await?;
    let shards: Vec<(i64, String, i32)> = sql
        .query(
            "SELECT shard_id, shard_table, port FROM shoal.shards ORDER BY shard_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let worker = pg
        .workers
        .iter()
        .find(|w| i32::from(w.port) == shards[0].2)
        .expect("placed on a worker");
    let client = worker.connect().await;
    // About 320 bytes per order across both tables with their primary keys (measured; the
    // reference data set has 19.5 MiB per 62,500 orders).
    let orders = (mb * 1024 * 1024 / 320).max(1000) as i64;
    client
        .execute(
            &format!(
                "INSERT INTO {} SELECT g, g % 100000, ((g * 7919) % 100000) / 100.0,
                        left(md5(g::text) || md5((g + 1)::text), 60)
                 FROM generate_series(1::bigint, $1) g",
                shards[0].1
            ),
            &[&orders],
        )
        .await?;
    client
        .execute(
            &format!(
                "INSERT INTO {} SELECT g, ((g - 1) / 2) + 1, (g % 10) + 1 FROM generate_series(1::bigint, $1) g",
                shards[1].1
            ),
            &[&(orders * 2)],
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE").await?;
    Ok((shards[0].0, shards.iter().map(|s| s.1.clone()).collect()))
}

async fn group_bytes(client: &Client, tables: &[String]) -> anyhow::Result<i64> {
    let mut total = 0;
    for table in tables {
        total += client
            .query_one("SELECT pg_total_relation_size(to_regclass($1))", &[table])
            .await?
            .get::<_, i64>(0);
    }
    Ok(total)
}

/// A raw binary COPY of every table of the group from `source` into empty copies with primary
/// keys on `target`, one table after another, as a user would pipe them.
async fn raw_copy(source: &Client, target: &Client, tables: &[String]) -> anyhow::Result<f64> {
    for table in tables {
        let copy = format!("{table}_rawcopy");
        target
            .batch_execute(&format!("DROP TABLE IF EXISTS {copy}"))
            .await?;
        // The same definition, primary key included, built the way a move builds it.
        let ddl: String = source
            .query_one(
                "SELECT 'CREATE TABLE ' || $2 || ' (' || string_agg(quote_ident(attname) || ' ' ||
                        format_type(atttypid, atttypmod), ', ' ORDER BY attnum) || ')'
                 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[table, &copy],
            )
            .await?
            .get(0);
        let key: String = source
            .query_one(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'",
                &[table],
            )
            .await?
            .get(0);
        target
            .batch_execute(&format!("{ddl}; ALTER TABLE {copy} ADD {key}"))
            .await?;
    }
    let started = Instant::now();
    for table in tables {
        let reader = source
            .copy_out(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
            .await?;
        let writer = target
            .copy_in(&format!("COPY {table}_rawcopy FROM STDIN (FORMAT binary)"))
            .await?;
        pin_mut!(reader, writer);
        while let Some(chunk) = reader.next().await {
            writer.feed(chunk?).await?;
        }
        writer.finish().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    for table in tables {
        target
            .batch_execute(&format!("DROP TABLE {table}_rawcopy"))
            .await?;
    }
    Ok(seconds)
}

async fn row_counts(coordinator: &Client) -> anyhow::Result<(i64, i64)> {
    let row = coordinator
        .query_one(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

pub async fn move_group(
    cluster: &Cluster,
    shard: i64,
    to: i32,
    mode: Mode,
) -> anyhow::Result<(f64, f64)> {
    let request = TransferRequest {
        shard_id: shard,
        target: to.to_string(),
        mode,
        operation: Operation::Move,
    };
    let started = Instant::now();
    let report = Transfer::prepare(cluster, &request, Tuning::default())
        .await?
        .run(CancelToken::default())
        .await?;
    Ok((started.elapsed().as_secs_f64(), report.write_block_ms))
}

pub async fn run(mb: u64, runs: usize) -> anyhow::Result<()> {
    let pg = TestCluster::start(2).await;
    let cluster = shoal_on(&pg).await?;
    let (shard, tables) = one_group(&pg, &cluster, mb).await?;
    let (mut logical, mut blocking, mut copies, mut stalls) = (vec![], vec![], vec![], vec![]);
    let mut bytes = 0;
    // Each run moves the group away (logical) and back (block_writes).
    let coordinator = pg.coordinator.connect().await;
    let at: i32 = coordinator
        .query_one(
            "SELECT node_id FROM shoal.shards WHERE shard_id = $1",
            &[&shard],
        )
        .await?
        .get(0);
    for run in 0..runs {
        let other = 3 - at;
        let source = pg.workers[(at - 1) as usize].connect().await;
        let target = pg.workers[(other - 1) as usize].connect().await;
        bytes = group_bytes(&source, &tables).await?;
        copies.push(raw_copy(&source, &target, &tables).await?);
        let rows = row_counts(&coordinator).await?;
        let (seconds, stall) = move_group(&cluster, shard, other, Mode::ForceLogical).await?;
        logical.push(seconds);
        stalls.push(stall);
        anyhow::ensure!(
            row_counts(&coordinator).await? == rows,
            "the logical move changed the row counts"
        );
        let (seconds, _) = move_group(&cluster, shard, at, Mode::BlockWrites).await?;
        blocking.push(seconds);
        anyhow::ensure!(
            row_counts(&coordinator).await? == rows,
            "the block_writes move changed the row counts"
        );
        eprintln!(
            "run {}: raw copy {:.2} s, force_logical move {:.2} s (writes blocked {:.1} ms), block_writes move {:.2} s",
            run + 1,
            copies[run],
            logical[run],
            stalls[run],
            blocking[run]
        );
    }
    let (copy, logical, blocking, stall) = (
        median(&mut copies),
        median(&mut logical),
        median(&mut blocking),
        median(&mut stalls),
    );
    let mib = bytes as f64 / 1024.0 / 1024.0;
    println!(
        "shard group: {mib:.0} MiB (orders + order_items, one shard each), {runs} runs, medians"
    );
    println!("raw binary COPY with primary keys:  {copy:.2} s");
    println!(
        "force_logical move:                 {logical:.2} s  = {:.2}x raw COPY (goal <= 1.5x){}",
        logical / copy,
        if (15.0..=25.0).contains(&mib) {
            "; Citus 13.2 on 19 MB: 1.44 s, goal <= 0.6 s".to_string()
        } else {
            String::new()
        }
    );
    println!(
        "block_writes move:                  {blocking:.2} s  = {:.2}x raw COPY{}",
        blocking / copy,
        if (15.0..=25.0).contains(&mib) {
            "; Citus 13.2 on 19 MB: 0.28 s".to_string()
        } else {
            String::new()
        }
    );
    println!("writes blocked at cutover (logical): {stall:.1} ms");
    Ok(())
}
