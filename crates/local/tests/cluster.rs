//! Brings up a real local cluster from the system's PostgreSQL binaries.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use rand::Rng;
use tokio_postgres::NoTls;

use shoal_local::{port_is_free, LocalCluster, CLUSTER_FILE, ENV_FILE};

/// Stops the cluster and removes its directory even when an assertion fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(cluster) = LocalCluster::open(&self.0) {
            for s in cluster.servers() {
                if shoal_local::is_running(cluster.binaries(), &s.data_dir) {
                    let _ = shoal_local::stop(
                        cluster.binaries(),
                        &s.data_dir,
                        shoal_local::StopMode::Immediate,
                    );
                }
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_base_port(count: u16) -> u16 {
    let mut rng = rand::thread_rng();
    loop {
        let base = rng.gen_range(20000..50000);
        if (base..base + count).all(port_is_free) {
            return base;
        }
    }
}

async fn wal_level(port: u16, dbname: &str) -> String {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname={dbname}");
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_idempotent_and_down_stops_everything() {
    // Under /tmp rather than $TMPDIR: the postgres account must be able to reach it.
    let dir = std::path::Path::new("/tmp").join(format!(
        "shoal-local-it-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _cleanup = Cleanup(dir.clone());
    let base = free_base_port(3);
    // A name that needs quoting as an identifier and encoding in the URI.
    let dbname = "shoal-it db";

    let t = Instant::now();
    let report = LocalCluster::up(&dir, 1, base, dbname).await.unwrap();
    eprintln!("up (create) took {:?}", t.elapsed());
    assert!(report.created);
    assert_eq!(report.started, ["coordinator", "worker1"]);
    assert_eq!(report.workers, [("127.0.0.1".to_string(), base + 1)]);
    assert_eq!(
        report.coordinator_uri,
        format!("postgresql://postgres@127.0.0.1:{base}/shoal-it%20db")
    );
    assert!(report.notes.is_empty());
    assert!(dir.join(CLUSTER_FILE).is_file());
    let env = fs::read_to_string(dir.join(ENV_FILE)).unwrap();
    assert_eq!(
        env,
        format!("export SHOAL_COORDINATOR={}\n", report.coordinator_uri)
    );

    // The URI itself must work for clients.
    let (client, conn) = tokio_postgres::connect(&report.coordinator_uri, NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, dbname);

    for port in [base, base + 1] {
        assert_eq!(wal_level(port, "'shoal-it db'").await, "logical");
    }

    let again = LocalCluster::up(&dir, 2, base + 10, dbname).await.unwrap();
    assert!(!again.created);
    assert!(again.started.is_empty());
    assert_eq!(again.workers, report.workers);
    assert_eq!(again.notes.len(), 2, "{:?}", again.notes);

    let mut cluster = LocalCluster::open(&dir).unwrap();
    let added = cluster.add_worker().await.unwrap();
    assert_eq!((added.name.as_str(), added.port), ("worker2", base + 2));
    assert_eq!(wal_level(added.port, "'shoal-it db'").await, "logical");
    let reopened = LocalCluster::open(&dir).unwrap();
    assert_eq!(reopened.worker_addresses().len(), 2, "worker2 recorded");
    assert!(cluster.status().iter().all(|s| s.running));
    assert_eq!(
        cluster.down().unwrap(),
        ["worker2", "worker1", "coordinator"]
    );
    assert!(cluster.status().iter().all(|s| !s.running));

    // up on a stopped cluster starts it again without creating anything.
    let restarted = LocalCluster::up(&dir, 1, base, dbname).await.unwrap();
    assert!(!restarted.created);
    assert_eq!(restarted.started, ["coordinator", "worker1", "worker2"]);
    cluster.down().unwrap();

    drop(_cleanup);
    assert!(!dir.exists());
}
