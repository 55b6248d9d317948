//! The shard this crate computes for a key is the partition PostgreSQL itself picks: random
//! and edge-case values of every key type, checked with `satisfies_hash_partition` on a real
//! server (every major of the test matrix).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use shoal_route::{shard_index, KeyType, KeyValue};
use shoal_testkit::TestCluster;

const SHARD_COUNTS: [u32; 3] = [1, 7, 32];
const RANDOM_VALUES: usize = 3000;

/// One value: how the server builds it from text (`None`: NULL), and what this crate reads.
struct Probe {
    sql_text: Option<String>,
    key: KeyValue,
}

/// Checks every probe against a table hash-partitioned on a column of `sql_type`, where
/// `build` turns the text `v` into a value of that type.
async fn check(sql: &Client, sql_type: &str, build: &str, probes: &[Probe]) {
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS probe; CREATE TABLE probe (k {sql_type}) PARTITION BY HASH (k)"
    ))
    .await
    .unwrap();
    let texts: Vec<Option<&str>> = probes.iter().map(|p| p.sql_text.as_deref()).collect();
    for shards in SHARD_COUNTS {
        let indexes: Vec<i32> = probes
            .iter()
            .map(|p| shard_index(&p.key, shards) as i32)
            .collect();
        let wrong: Vec<String> = sql
            .query(
                &format!(
                    "SELECT coalesce(v, 'NULL') FROM unnest($1::text[], $2::int[]) AS t(v, r)
                     WHERE NOT satisfies_hash_partition('probe'::regclass, $3, r, ({build})::{sql_type})"
                ),
                &[&texts, &indexes, &(shards as i32)],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            wrong.is_empty(),
            "{sql_type} with {shards} shards: other shards for {} values, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

fn from_text(ty: KeyType, texts: impl IntoIterator<Item = String>) -> Vec<Probe> {
    let mut probes: Vec<Probe> = texts
        .into_iter()
        .map(|text| Probe {
            key: ty.read_text(&text).unwrap(),
            sql_text: Some(text),
        })
        .collect();
    probes.push(Probe {
        sql_text: None,
        key: KeyValue::Null,
    });
    probes
}

fn random_text(rng: &mut StdRng) -> String {
    // Every length up to 40 (all of lookup3's tails), with multi-byte characters.
    let alphabet: Vec<char> = "ab Zé€😀\u{7f}0".chars().collect();
    let len = rng.gen_range(0..40);
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
        .collect()
}

#[tokio::test]
async fn every_key_type_lands_where_postgresql_puts_it() {
    let pg = TestCluster::start(0).await;
    let sql = pg.coordinator.connect().await;
    let mut rng = StdRng::seed_from_u64(20261201);

    let edges = [0i64, 1, -1, i64::MAX, i64::MIN, i64::from(i32::MAX) + 1];
    let ints: Vec<i64> = (0..RANDOM_VALUES).map(|_| rng.gen()).chain(edges).collect();
    let int8: Vec<String> = ints.iter().map(i64::to_string).collect();
    check(&sql, "bigint", "v", &from_text(KeyType::Int8, int8)).await;
    let int4: Vec<String> = ints.iter().map(|v| (*v as i32).to_string()).collect();
    check(&sql, "integer", "v", &from_text(KeyType::Int4, int4)).await;
    let int2: Vec<String> = ints.iter().map(|v| (*v as i16).to_string()).collect();
    check(&sql, "smallint", "v", &from_text(KeyType::Int2, int2)).await;
    let oids: Vec<String> = ints.iter().map(|v| (*v as u32).to_string()).collect();
    check(&sql, "oid", "v", &from_text(KeyType::Oid, oids)).await;
    let bools = ["t", "f", "true", "off"].map(String::from);
    check(&sql, "boolean", "v", &from_text(KeyType::Bool, bools)).await;

    let texts: Vec<String> = (0..RANDOM_VALUES).map(|_| random_text(&mut rng)).collect();
    check(&sql, "text", "v", &from_text(KeyType::Text, texts.clone())).await;
    check(
        &sql,
        "varchar(200)",
        "v",
        &from_text(KeyType::Text, texts.clone()),
    )
    .await;
    let padded: Vec<String> = texts
        .iter()
        .map(|t| t.chars().take(10).collect::<String>())
        .collect();
    check(&sql, "char(12)", "v", &from_text(KeyType::Bpchar, padded)).await;

    let uuids: Vec<String> = (0..RANDOM_VALUES)
        .map(|_| {
            let bytes: [u8; 16] = rng.gen();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        })
        .collect();
    check(&sql, "uuid", "v", &from_text(KeyType::Uuid, uuids)).await;
    let byteas: Vec<String> = (0..RANDOM_VALUES)
        .map(|_| {
            let len = rng.gen_range(0..40);
            let hex: String = (0..len)
                .map(|_| format!("{:02x}", rng.gen::<u8>()))
                .collect();
            format!("\\x{hex}")
        })
        .collect();
    check(&sql, "bytea", "v", &from_text(KeyType::Bytea, byteas)).await;

    // Dates and timestamps as stored: days and microseconds since 2000-01-01.
    let days: Vec<i32> = (0..RANDOM_VALUES)
        .map(|_| rng.gen_range(-700_000..2_000_000))
        .collect();
    let date_probes: Vec<Probe> = days
        .iter()
        .map(|d| Probe {
            sql_text: Some(d.to_string()),
            key: KeyType::Date.read_binary(&d.to_be_bytes()).unwrap(),
        })
        .collect();
    check(&sql, "date", "DATE '2000-01-01' + v::int", &date_probes).await;
    let micros: Vec<i64> = (0..RANDOM_VALUES)
        .map(|_| rng.gen_range(-60_000_000_000_000_000..200_000_000_000_000_000))
        .collect();
    let timestamp_probes: Vec<Probe> = micros
        .iter()
        .map(|us| Probe {
            sql_text: Some(us.to_string()),
            key: KeyType::Timestamp.read_binary(&us.to_be_bytes()).unwrap(),
        })
        .collect();
    check(
        &sql,
        "timestamp",
        "TIMESTAMP '2000-01-01' + (v || ' microseconds')::interval",
        &timestamp_probes,
    )
    .await;
    check(
        &sql,
        "timestamptz",
        "TIMESTAMPTZ '2000-01-01 00:00:00+00' + (v || ' microseconds')::interval",
        &timestamp_probes,
    )
    .await;
}
