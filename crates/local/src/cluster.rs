//! A local cluster: one coordinator and N workers in one directory, described by cluster.toml.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;

use serde::{Deserialize, Serialize};

use crate::binaries::PgBinaries;
use crate::database::{create_database, validate_dbname};
use crate::error::{LocalError, Result};
use crate::server::{self, InitOptions, StopMode};

pub const CLUSTER_FILE: &str = "cluster.toml";
pub const ENV_FILE: &str = "shoal.env";
const HOST: &str = "127.0.0.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Worker,
}

/// One server as recorded in cluster.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntry {
    pub name: String,
    pub role: Role,
    pub port: u16,
    /// Relative to the cluster directory.
    pub data_dir: PathBuf,
}

/// Contents of cluster.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub dbname: String,
    pub base_port: u16,
    pub servers: Vec<ServerEntry>,
}

impl ClusterFile {
    /// The layout `up` creates: coordinator on `base_port`, worker i on `base_port + i`.
    pub fn new(dbname: &str, base_port: u16, workers: usize) -> Result<ClusterFile> {
        let last = u32::from(base_port) + workers as u32;
        if last > u32::from(u16::MAX) {
            return Err(LocalError::PortRange {
                base: base_port,
                last,
            });
        }
        let mut servers = vec![ServerEntry {
            name: "coordinator".into(),
            role: Role::Coordinator,
            port: base_port,
            data_dir: "coordinator".into(),
        }];
        servers.extend((1..=workers).map(|i| worker_entry(base_port, i as u16)));
        Ok(ClusterFile {
            dbname: dbname.to_string(),
            base_port,
            servers,
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("cluster file always serialises")
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<ClusterFile> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| LocalError::ClusterFile {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        if file
            .servers
            .iter()
            .filter(|s| s.role == Role::Coordinator)
            .count()
            != 1
        {
            return Err(LocalError::ClusterFile {
                path: path.to_path_buf(),
                message: "it must list exactly one coordinator".into(),
            });
        }
        Ok(file)
    }

    fn coordinator(&self) -> &ServerEntry {
        self.servers
            .iter()
            .find(|s| s.role == Role::Coordinator)
            .expect("validated on load")
    }

    fn workers(&self) -> impl Iterator<Item = &ServerEntry> {
        self.servers.iter().filter(|s| s.role == Role::Worker)
    }

    /// Index for the next worker: one past the highest `workerN`.
    fn next_worker_index(&self) -> u16 {
        self.workers()
            .filter_map(|s| s.name.strip_prefix("worker")?.parse::<u16>().ok())
            .max()
            .unwrap_or(0)
            + 1
    }
}

fn worker_entry(base_port: u16, index: u16) -> ServerEntry {
    ServerEntry {
        name: format!("worker{index}"),
        role: Role::Worker,
        port: base_port + index,
        data_dir: format!("worker{index}").into(),
    }
}

/// `postgresql://postgres@127.0.0.1:PORT/DBNAME`, the database name percent-encoded.
pub fn postgres_uri(port: u16, dbname: &str) -> String {
    format!(
        "postgresql://postgres@{HOST}:{port}/{}",
        percent_encode(dbname)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One server of a local cluster, with absolute paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalServer {
    pub name: String,
    pub role: Role,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
}

/// What `status` reports for one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub role: Role,
    pub port: u16,
    pub data_dir: PathBuf,
    pub running: bool,
}

/// What `up` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpReport {
    pub coordinator_uri: String,
    /// True when the cluster was created now, false when it already existed.
    pub created: bool,
    /// Names of the servers started by this call.
    pub started: Vec<String>,
    /// (host, port) of every worker.
    pub workers: Vec<(String, u16)>,
    /// Things the caller should tell the user, e.g. requested settings that were ignored.
    pub notes: Vec<String>,
}

/// A cluster directory: `DIR/cluster.toml`, `DIR/shoal.env`, `DIR/<name>` data dirs, `DIR/<name>.log`.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    dir: PathBuf,
    file: ClusterFile,
    bins: PgBinaries,
}

impl LocalCluster {
    /// Creates the cluster in `dir` and starts it, or, if `dir` already holds one, starts
    /// whatever is stopped and changes nothing else.
    pub async fn up(dir: &Path, workers: usize, base_port: u16, dbname: &str) -> Result<UpReport> {
        let dir = std::path::absolute(dir)
            .map_err(|e| LocalError::io(format!("could not resolve {}", dir.display()), e))?;
        if dir.join(CLUSTER_FILE).exists() {
            let cluster = LocalCluster::open(&dir)?;
            let notes = cluster.differences(workers, base_port, dbname);
            let started = blocking({
                let cluster = cluster.clone();
                move || cluster.start_stopped()
            })
            .await?;
            return Ok(cluster.report(false, started, notes));
        }

        validate_dbname(dbname)?;
        let file = ClusterFile::new(dbname, base_port, workers)?;
        for s in &file.servers {
            if !server::port_is_free(s.port) {
                return Err(LocalError::PortInUse { port: s.port });
            }
        }
        let bins = PgBinaries::discover()?;
        let dir_existed = dir.exists();
        let cluster = LocalCluster { dir, file, bins };
        // Refuse before creating anything, so cleaning up after a failure only ever
        // removes what this call created.
        for s in cluster.servers() {
            ensure_unused(&s)?;
        }
        fs::create_dir_all(&cluster.dir).map_err(|e| {
            LocalError::io(format!("could not create {}", cluster.dir.display()), e)
        })?;
        match cluster.create().await {
            Ok(()) => {
                let started = cluster
                    .file
                    .servers
                    .iter()
                    .map(|s| s.name.clone())
                    .collect();
                Ok(cluster.report(true, started, Vec::new()))
            }
            Err(e) => {
                cluster.remove_partial(dir_existed);
                Err(e)
            }
        }
    }

    async fn create(&self) -> Result<()> {
        let servers = self.servers();
        let bins = self.bins.clone();
        blocking(move || create_servers(&bins, &servers)).await?;
        for s in &self.file.servers {
            create_database(s.port, &self.file.dbname).await?;
        }
        self.save()?;
        write_new(
            &self.dir.join(ENV_FILE),
            &format!("export SHOAL_COORDINATOR={}\n", self.coordinator_uri()),
        )
    }

    /// Undoes a failed `up`: stops what started and removes what was created.
    fn remove_partial(&self, dir_existed: bool) {
        for s in self.servers() {
            if server::is_running(&self.bins, &s.data_dir) {
                let _ = server::stop(&self.bins, &s.data_dir, StopMode::Immediate);
            }
            let _ = fs::remove_dir_all(&s.data_dir);
            let _ = fs::remove_file(&s.log_file);
        }
        if !dir_existed {
            let _ = fs::remove_dir(&self.dir);
        }
    }

    /// Opens the cluster recorded in `dir`/cluster.toml.
    pub fn open(dir: &Path) -> Result<LocalCluster> {
        let dir = std::path::absolute(dir)
            .map_err(|e| LocalError::io(format!("could not resolve {}", dir.display()), e))?;
        let path = dir.join(CLUSTER_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LocalError::NoCluster { dir });
            }
            Err(e) => {
                return Err(LocalError::io(
                    format!("could not read {}", path.display()),
                    e,
                ));
            }
        };
        let file = ClusterFile::from_toml(&path, &text)?;
        let bins = PgBinaries::discover()?;
        Ok(LocalCluster { dir, file, bins })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn dbname(&self) -> &str {
        &self.file.dbname
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// Every server, coordinator first.
    pub fn servers(&self) -> Vec<LocalServer> {
        self.file.servers.iter().map(|s| self.server(s)).collect()
    }

    fn server(&self, entry: &ServerEntry) -> LocalServer {
        LocalServer {
            name: entry.name.clone(),
            role: entry.role,
            port: entry.port,
            data_dir: self.dir.join(&entry.data_dir),
            log_file: self.dir.join(format!("{}.log", entry.name)),
        }
    }

    pub fn coordinator_uri(&self) -> String {
        postgres_uri(self.file.coordinator().port, &self.file.dbname)
    }

    /// (host, port) of every worker.
    pub fn worker_addresses(&self) -> Vec<(String, u16)> {
        self.file
            .workers()
            .map(|s| (HOST.to_string(), s.port))
            .collect()
    }

    /// Starts every stopped server; returns the names started.
    pub fn start_stopped(&self) -> Result<Vec<String>> {
        let mut started = Vec::new();
        for s in self.servers() {
            if !server::is_running(&self.bins, &s.data_dir) {
                server::start(&self.bins, &s.data_dir, &s.log_file)?;
                started.push(s.name);
            }
        }
        Ok(started)
    }

    /// Stops every running server (fast mode); returns the names stopped.
    pub fn down(&self) -> Result<Vec<String>> {
        let mut stopped = Vec::new();
        // Workers first, so the coordinator is last to go.
        for s in self.servers().into_iter().rev() {
            if server::is_running(&self.bins, &s.data_dir) {
                server::stop(&self.bins, &s.data_dir, StopMode::Fast)?;
                stopped.push(s.name);
            }
        }
        Ok(stopped)
    }

    pub fn status(&self) -> Vec<ServerStatus> {
        self.servers()
            .into_iter()
            .map(|s| ServerStatus {
                running: server::is_running(&self.bins, &s.data_dir),
                name: s.name,
                role: s.role,
                port: s.port,
                data_dir: s.data_dir,
            })
            .collect()
    }

    /// Creates, starts and records one more worker on `base_port + index`.
    pub async fn add_worker(&mut self) -> Result<LocalServer> {
        let index = self.file.next_worker_index();
        let port = u32::from(self.file.base_port) + u32::from(index);
        let port = u16::try_from(port).map_err(|_| LocalError::PortRange {
            base: self.file.base_port,
            last: port,
        })?;
        if !server::port_is_free(port) {
            return Err(LocalError::PortInUse { port });
        }
        let entry = worker_entry(self.file.base_port, index);
        let new = self.server(&entry);
        ensure_unused(&new)?;
        let result = async {
            let (bins, s) = (self.bins.clone(), new.clone());
            blocking(move || create_servers(&bins, std::slice::from_ref(&s))).await?;
            create_database(port, &self.file.dbname).await
        }
        .await;
        if let Err(e) = result {
            if server::is_running(&self.bins, &new.data_dir) {
                let _ = server::stop(&self.bins, &new.data_dir, StopMode::Immediate);
            }
            let _ = fs::remove_dir_all(&new.data_dir);
            return Err(e);
        }
        self.file.servers.push(entry);
        self.save()?;
        Ok(new)
    }

    fn save(&self) -> Result<()> {
        let path = self.dir.join(CLUSTER_FILE);
        // Write then rename so a crash never leaves a truncated cluster file.
        let tmp = self.dir.join(format!("{CLUSTER_FILE}.tmp"));
        fs::write(&tmp, self.file.to_toml())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| LocalError::io(format!("could not write {}", path.display()), e))
    }

    /// Notes for an `up` whose arguments differ from the recorded cluster.
    fn differences(&self, workers: usize, base_port: u16, dbname: &str) -> Vec<String> {
        let mut notes = Vec::new();
        let dir = self.dir.display();
        let have = self.file.workers().count();
        if have != workers {
            notes.push(format!(
                "{dir} already holds a cluster with {have} worker(s); kept them (requested {workers}; use add-worker to add more)"
            ));
        }
        if self.file.base_port != base_port {
            notes.push(format!(
                "{dir} already holds a cluster on port {}; kept it (requested {base_port})",
                self.file.base_port
            ));
        }
        if self.file.dbname != dbname {
            notes.push(format!(
                "{dir} already holds a cluster with database {:?}; kept it (requested {dbname:?})",
                self.file.dbname
            ));
        }
        notes
    }

    fn report(&self, created: bool, started: Vec<String>, notes: Vec<String>) -> UpReport {
        UpReport {
            coordinator_uri: self.coordinator_uri(),
            created,
            started,
            workers: self.worker_addresses(),
            notes,
        }
    }
}

/// Fails if a server's data directory already has contents.
fn ensure_unused(s: &LocalServer) -> Result<()> {
    let has_contents = fs::read_dir(&s.data_dir).is_ok_and(|mut d| d.next().is_some());
    if has_contents {
        return Err(LocalError::DirNotEmpty {
            dir: s.data_dir.clone(),
        });
    }
    Ok(())
}

/// initdb and start each server, in parallel (initdb is mostly CPU, start mostly waiting).
fn create_servers(bins: &PgBinaries, servers: &[LocalServer]) -> Result<()> {
    let opts = |port| InitOptions {
        port,
        no_sync: false,
        settings: Vec::new(),
    };
    thread::scope(|scope| {
        let handles: Vec<_> = servers
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    server::initdb(bins, &s.data_dir, &opts(s.port))?;
                    server::start(bins, &s.data_dir, &s.log_file)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<Vec<()>>>()
            .map(|_| ())
    })
}

/// Runs blocking process management off the async runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(LocalError::io(
                "background task cancelled",
                io::Error::other(e),
            )),
        },
    }
}

fn write_new(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents)
        .map_err(|e| LocalError::io(format!("could not write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        let file = ClusterFile::new("shoal", 5432, 2).unwrap();
        let names: Vec<_> = file
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.port))
            .collect();
        assert_eq!(
            names,
            [("coordinator", 5432), ("worker1", 5433), ("worker2", 5434)]
        );
        let text = file.to_toml();
        assert!(text.contains("role = \"coordinator\""));
        assert!(text.contains("data_dir = \"worker2\""));
        let back = ClusterFile::from_toml(Path::new("cluster.toml"), &text).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.next_worker_index(), 3);
    }

    #[test]
    fn rejects_bad_files() {
        let path = Path::new("cluster.toml");
        assert!(ClusterFile::from_toml(path, "dbname = 1").is_err());
        let no_coordinator = "dbname = \"x\"\nbase_port = 1\nservers = []\n";
        assert!(ClusterFile::from_toml(path, no_coordinator).is_err());
    }

    #[test]
    fn rejects_ports_past_65535() {
        assert!(ClusterFile::new("shoal", 65535, 1).is_err());
        assert!(ClusterFile::new("shoal", 65534, 1).is_ok());
    }

    #[test]
    fn builds_uris() {
        assert_eq!(
            postgres_uri(5432, "shoal"),
            "postgresql://postgres@127.0.0.1:5432/shoal"
        );
        assert_eq!(
            postgres_uri(6000, "my db/ü"),
            "postgresql://postgres@127.0.0.1:6000/my%20db%2F%C3%BC"
        );
    }
}
