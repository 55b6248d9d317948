//! Test harness (see ARCHITECTURE.md): real PostgreSQL clusters for integration tests.
//!
//! Each server is a copy of a template data directory initdb'd once per machine, started on
//! a random free port under `temp_dir()/shoal-testkit/run-<pid>-<n>-<random>/`. Dropping the
//! cluster stops its servers and removes that directory, also when the test panicked.
//! Safe to use from parallel tests and from several test processes at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use tokio_postgres::NoTls;

use shoal_local::{LocalError, PgBinaries, StopMode};

pub mod ports;
mod secure;
mod sweep;
mod template;
mod versions;

pub use secure::Certificates;
pub use sweep::sweep_stale;
pub use template::{binaries, root, template, template_for, test_settings, DBNAME};
pub use versions::{binaries_of, other_major, supports_tls, tls_binaries};

/// How often a start is retried on a new port when another process took the chosen one.
const START_ATTEMPTS: usize = 5;

/// One PostgreSQL server of a test cluster.
#[derive(Debug)]
pub struct TestServer {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    /// The installation it runs from (the default [`binaries`], or another major's).
    pub bins: PgBinaries,
}

impl TestServer {
    /// `postgresql://postgres@127.0.0.1:PORT/shoal`
    pub fn uri(&self) -> String {
        shoal_local::postgres_uri(self.port, DBNAME)
    }

    /// `127.0.0.1:PORT`
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection to the `shoal` database as `postgres`; its connection task runs on tokio.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname={DBNAME} connect_timeout=10",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conninfo, NoTls)
            .await
            .unwrap_or_else(|e| panic!("shoal-testkit: could not connect to {}: {e}", self.name));
        tokio::spawn(async move {
            // Ends with an error when the server is stopped under it; that is expected.
            let _ = connection.await;
        });
        client
    }

    pub fn is_running(&self) -> bool {
        shoal_local::is_running(&self.bins, &self.data_dir)
    }

    /// Copies the template of `bins` into `data_dir` and starts it on a free port.
    fn launch(name: String, run_dir: &Path, bins: PgBinaries) -> TestServer {
        let data_dir = run_dir.join(&name);
        let log_file = run_dir.join(format!("{name}.log"));
        copy_template(&template_for(&bins), &data_dir);
        distinct_oids(&bins, &data_dir);
        let port = start_on_free_port(&bins, &data_dir, &log_file)
            .unwrap_or_else(|e| panic!("shoal-testkit: {e}"));
        TestServer {
            name,
            port,
            data_dir,
            log_file,
            bins,
        }
    }

    /// Kills the postmaster and every process it started with SIGKILL, as a crash would, and
    /// waits until they are gone. [`TestServer::restart`] runs crash recovery.
    pub fn crash(&self) {
        let pid_file = fs::read_to_string(self.data_dir.join("postmaster.pid")).unwrap_or_default();
        let Some(pid) = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            panic!("shoal-testkit: {} is not running", self.name);
        };
        let mut pids = vec![pid];
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid ...: the command may hold spaces, so split after ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(pid) {
                    if let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() {
                        pids.push(child);
                    }
                }
            }
        }
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .args(pids.iter().map(u32::to_string))
            .status();
        for _ in 0..500 {
            if pids
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("shoal-testkit: {} did not die", self.name);
    }

    /// Starts it again on its port, after a stop or a crash.
    pub fn restart(&self) {
        if let Err(e) = shoal_local::start(&self.bins, &self.data_dir, &self.log_file) {
            panic!("shoal-testkit: could not restart {}: {e}", self.name);
        }
    }

    fn stop(&self, mode: StopMode) -> Result<(), LocalError> {
        shoal_local::stop(&self.bins, &self.data_dir, mode)
    }
}

/// A coordinator and N workers, stopped and removed on drop.
#[derive(Debug)]
pub struct TestCluster {
    pub coordinator: TestServer,
    pub workers: Vec<TestServer>,
    run_dir: PathBuf,
    next_worker: usize,
}

impl TestCluster {
    /// Starts a coordinator and `workers` workers, each with an empty `shoal` database.
    /// Panics with the reason on failure.
    pub async fn start(workers: usize) -> TestCluster {
        TestCluster::start_from(workers, binaries().clone()).await
    }

    /// Like [`TestCluster::start`], every server from `bins` (another installation).
    pub async fn start_from(workers: usize, bins: PgBinaries) -> TestCluster {
        blocking(move || TestCluster::start_blocking(workers, bins)).await
    }

    fn start_blocking(workers: usize, bins: PgBinaries) -> TestCluster {
        let root = root();
        sweep_stale(&root);
        template_for(&bins);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let run_dir = root.join(format!(
            "run-{}-{}-{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        if let Err(e) = fs::create_dir(&run_dir) {
            panic!("shoal-testkit: could not create {}: {e}", run_dir.display());
        }
        let names: Vec<String> = std::iter::once("coordinator".to_string())
            .chain((1..=workers).map(|i| format!("worker{i}")))
            .collect();
        // Servers start in parallel: a start is mostly waiting.
        let launched: Vec<thread::Result<TestServer>> = thread::scope(|s| {
            let handles: Vec<_> = names
                .into_iter()
                .map(|name| {
                    let run_dir = &run_dir;
                    let bins = bins.clone();
                    s.spawn(move || TestServer::launch(name, run_dir, bins))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut servers = Vec::new();
        let mut panic = None;
        for result in launched {
            match result {
                Ok(server) => servers.push(server),
                Err(p) => panic = panic.or(Some(p)),
            }
        }
        if let Some(p) = panic {
            // Clean up the servers that did start before passing the failure on.
            teardown(&servers.iter().collect::<Vec<_>>(), &run_dir);
            std::panic::resume_unwind(p);
        }
        let coordinator = servers.remove(0);
        TestCluster {
            coordinator,
            workers: servers,
            run_dir,
            next_worker: workers + 1,
        }
    }

    /// `postgresql://postgres@127.0.0.1:PORT/shoal` of the coordinator.
    pub fn coordinator_uri(&self) -> String {
        self.coordinator.uri()
    }

    /// The directory holding every server of this cluster.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Coordinator first, then the workers.
    pub fn servers(&self) -> impl Iterator<Item = &TestServer> {
        std::iter::once(&self.coordinator).chain(&self.workers)
    }

    /// Starts one more worker and returns it.
    pub async fn add_worker(&mut self) -> &TestServer {
        self.add_worker_from(binaries().clone()).await
    }

    /// Starts one more worker from another installation (another PostgreSQL major, for
    /// clusters of mixed versions) and returns it.
    pub async fn add_worker_from(&mut self, bins: PgBinaries) -> &TestServer {
        let name = format!("worker{}", self.next_worker);
        self.next_worker += 1;
        let run_dir = self.run_dir.clone();
        let server = blocking(move || TestServer::launch(name, &run_dir, bins)).await;
        self.workers.push(server);
        self.workers.last().expect("just pushed")
    }

    /// Stops worker `i` (index into `workers`) cleanly.
    pub fn stop_worker(&self, i: usize) {
        let w = &self.workers[i];
        if let Err(e) = w.stop(StopMode::Fast) {
            panic!("shoal-testkit: could not stop {}: {e}", w.name);
        }
    }

    /// Starts worker `i` again on the same port.
    pub fn start_worker(&self, i: usize) {
        let w = &self.workers[i];
        if let Err(e) = shoal_local::start(&w.bins, &w.data_dir, &w.log_file) {
            panic!("shoal-testkit: could not restart {}: {e}", w.name);
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            // The test failed: the servers' last words often say why.
            for s in self.servers() {
                let log = fs::read_to_string(&s.log_file).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                eprintln!("--- last lines of {} ({}):\n{tail}", s.name, s.host_port());
            }
        }
        teardown(&self.servers().collect::<Vec<_>>(), &self.run_dir);
    }
}

/// Immediate stop of every server (in parallel), then removal of the run directory.
/// Never panics: it runs in Drop, possibly while unwinding.
fn teardown(servers: &[&TestServer], run_dir: &Path) {
    let stop = |s: &TestServer| {
        if s.data_dir.join("postmaster.pid").exists() {
            if let Err(e) = s.stop(StopMode::Immediate) {
                tracing::warn!(server = %s.name, error = %e, "could not stop test server");
            }
        }
        ports::release(s.port);
    };
    thread::scope(|scope| {
        let mut handles = Vec::new();
        for s in servers {
            match thread::Builder::new().spawn_scoped(scope, move || stop(s)) {
                Ok(h) => handles.push(h),
                Err(_) => stop(s),
            }
        }
        for h in handles {
            let _ = h.join();
        }
    });
    if let Err(e) = fs::remove_dir_all(run_dir) {
        tracing::warn!(dir = %run_dir.display(), error = %e, "could not remove test run directory");
    }
}

/// `cp -a` keeps the template's owner (the server account) and modes.
fn copy_template(template: &Path, data_dir: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(template)
        .arg(data_dir)
        .output()
        .unwrap_or_else(|e| panic!("shoal-testkit: could not run cp: {e}"));
    if !out.status.success() {
        panic!(
            "shoal-testkit: could not copy the template to {}: {}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Starts the copy's OID counter at a random place. Copies of one template would otherwise
/// hand out the same OIDs in step (and they share a system identifier): two targets'
/// subscriptions would get one oid, and their table-sync slots on a common source one name,
/// which separate servers never do.
fn distinct_oids(bins: &PgBinaries, data_dir: &Path) {
    let next_oid = 1_000_000 + rand::random::<u32>() % 2_000_000_000;
    let out = template::run_as()
        .command(bins.program("pg_resetwal"))
        .arg("-o")
        .arg(next_oid.to_string())
        .arg(data_dir)
        .output()
        .unwrap_or_else(|e| panic!("shoal-testkit: could not run pg_resetwal: {e}"));
    if !out.status.success() {
        panic!(
            "shoal-testkit: pg_resetwal -o on {} failed: {}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Starts the server on a random free port, retrying with another port when a different
/// process grabbed it between the check and the start.
fn start_on_free_port(bins: &PgBinaries, data_dir: &Path, log_file: &Path) -> Result<u16, String> {
    for _ in 0..START_ATTEMPTS {
        let port = ports::reserve();
        shoal_local::set_port(data_dir, port).map_err(|e| e.to_string())?;
        match shoal_local::start(bins, data_dir, log_file) {
            Ok(()) => return Ok(port),
            Err(LocalError::StartFailed { ref log_tail, .. }) if port_taken(log_tail) => {
                tracing::info!(port, "port taken meanwhile; retrying on another");
            }
            Err(e) => {
                ports::release(port);
                return Err(e.to_string());
            }
        }
    }
    Err(format!(
        "{} did not start: its port was taken {START_ATTEMPTS} times in a row",
        data_dir.display()
    ))
}

fn port_taken(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

/// Runs blocking setup off the async runtime, passing panics through with their message.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("shoal-testkit: setup task cancelled: {e}"),
        },
    }
}
