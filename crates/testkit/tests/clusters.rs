//! Starts real test clusters side by side and checks they are complete, independent and
//! leave nothing behind.

use std::fs;
use std::process::Command;
use std::time::Instant;

use shoal_testkit::{binaries, root, sweep_stale, template, TestCluster, TestServer};

async fn wal_level(server: &TestServer) -> String {
    let client = server.connect().await;
    client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clusters_add_restart_and_clean_up() {
    let t = Instant::now();
    let (mut a, b) = tokio::join!(TestCluster::start(2), TestCluster::start(2));
    eprintln!("two clusters of 3 servers started in {:?}", t.elapsed());

    let mut ports: Vec<u16> = a.servers().chain(b.servers()).map(|s| s.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6, "every server has its own port");
    assert_ne!(a.run_dir(), b.run_dir());
    for s in a.servers().chain(b.servers()) {
        assert!(s.is_running(), "{} is running", s.name);
        assert_eq!(wal_level(s).await, "logical", "{}", s.name);
    }
    assert_eq!(
        a.coordinator_uri(),
        format!(
            "postgresql://postgres@127.0.0.1:{}/shoal",
            a.coordinator.port
        )
    );
    assert_eq!(
        a.workers[0].host_port(),
        format!("127.0.0.1:{}", a.workers[0].port)
    );

    // Clusters are independent: a table in one is not in the other.
    a.coordinator
        .connect()
        .await
        .batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .unwrap();
    let found = b
        .coordinator
        .connect()
        .await
        .query_opt("SELECT 1 FROM pg_class WHERE relname = 'only_in_a'", &[])
        .await
        .unwrap();
    assert!(found.is_none());

    let t = Instant::now();
    let added = a.add_worker().await;
    assert_eq!(added.name, "worker3");
    assert_eq!(wal_level(added).await, "logical");
    eprintln!("add_worker took {:?}", t.elapsed());
    assert_eq!(a.workers.len(), 3);

    let port = b.workers[1].port;
    b.stop_worker(1);
    assert!(!b.workers[1].is_running());
    b.start_worker(1);
    assert!(b.workers[1].is_running());
    assert_eq!(b.workers[1].port, port);
    assert_eq!(wal_level(&b.workers[1]).await, "logical");

    let dirs = [a.run_dir().to_path_buf(), b.run_dir().to_path_buf()];
    let data_dirs: Vec<_> = a
        .servers()
        .chain(b.servers())
        .map(|s| s.data_dir.clone())
        .collect();
    let t = Instant::now();
    drop(a);
    drop(b);
    eprintln!("two clusters dropped in {:?}", t.elapsed());
    for d in dirs {
        assert!(!d.exists(), "{} removed", d.display());
    }
    for d in data_dirs {
        assert!(!shoal_local::is_running(binaries(), &d));
    }
}

#[tokio::test]
async fn drop_during_a_panic_cleans_up() {
    let cluster = TestCluster::start(0).await;
    let dir = cluster.run_dir().to_path_buf();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _cluster = cluster;
        panic!("test failure");
    }));
    assert!(result.is_err());
    assert!(!dir.exists());
}

/// A run directory left by a killed process (its pid is gone) is stopped and removed by a
/// sweep, while directories of live processes are kept. Uses a private root so the sweeps of
/// tests running in parallel cannot touch this test's directories.
#[test]
fn stale_run_directories_are_swept() {
    // A pid that existed and is gone: a child that has exited and been waited for.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();

    let private_root = root().join(format!("sweep-test-{}", std::process::id()));
    let stale = private_root.join(format!("run-{dead_pid}-0-deadbeef"));
    let live = private_root.join(format!("run-{}-0-cafe", std::process::id()));
    fs::create_dir_all(&stale).unwrap();
    fs::create_dir_all(&live).unwrap();
    let data_dir = stale.join("coordinator");
    let out = Command::new("cp")
        .arg("-a")
        .arg(template())
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    shoal_local::set_port(&data_dir, port).unwrap();
    shoal_local::start(binaries(), &data_dir, &stale.join("coordinator.log")).unwrap();
    assert!(shoal_local::is_running(binaries(), &data_dir));

    sweep_stale(&private_root);
    let still_running = shoal_local::is_running(binaries(), &data_dir);
    let stale_exists = stale.exists();
    let live_exists = live.exists();
    if still_running {
        let _ = shoal_local::stop(binaries(), &data_dir, shoal_local::StopMode::Immediate);
    }
    fs::remove_dir_all(&private_root).unwrap();
    assert!(!still_running, "stale server stopped");
    assert!(!stale_exists, "stale run directory removed");
    assert!(live_exists, "a live process's directory is kept");
}
