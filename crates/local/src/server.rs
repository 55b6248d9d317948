//! One PostgreSQL server: initdb, configuration, start and stop through pg_ctl.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use crate::binaries::PgBinaries;
use crate::error::{LocalError, Result};
use crate::user::RunAs;

/// File with Shoal's settings, included from postgresql.conf.
pub const SHOAL_CONF: &str = "shoal.conf";
const INCLUDE_LINE: &str = "include 'shoal.conf'";
const LOG_TAIL_LINES: usize = 20;
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How initdb prepares a data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitOptions {
    pub port: u16,
    /// Skip initdb's fsync (faster; fine for throwaway servers).
    pub no_sync: bool,
    /// Extra settings appended to shoal.conf; they override the defaults of the same name.
    pub settings: Vec<(String, String)>,
}

/// How `stop` shuts a server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients and shut down cleanly.
    Fast,
    /// Abort at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Settings every Shoal server needs (logical replication for shard moves, TCP only).
fn base_settings(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("listen_addresses", "127.0.0.1".into()),
        ("port", port.to_string()),
        // TCP only: avoids socket-path-length and permission problems.
        ("unix_socket_directories", String::new()),
        ("wal_level", "logical".into()),
        ("max_replication_slots", "64".into()),
        ("max_wal_senders", "64".into()),
        ("max_logical_replication_workers", "16".into()),
        ("max_worker_processes", "32".into()),
        ("max_sync_workers_per_subscription", "4".into()),
        // A new subscription's apply worker starts at most once per this interval; the
        // default 5s would dominate shard moves.
        ("wal_retrieve_retry_interval", "100ms".into()),
        ("max_connections", "200".into()),
        // Shoal's endpoint commits transactions that wrote on several servers with
        // two-phase commit: one prepared transaction per connection at most.
        ("max_prepared_transactions", "200".into()),
        ("logging_collector", "off".into()),
    ]
}

/// Renders shoal.conf. Every value is single-quoted, which PostgreSQL accepts for any type.
pub fn render_shoal_conf(port: u16, extra: &[(String, String)]) -> String {
    let mut out =
        String::from("# Written by Shoal; `port` is rewritten when the directory is copied.\n");
    let overridden = |name: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let base = base_settings(port);
    let lines = base
        .iter()
        .filter(|(k, _)| !overridden(k))
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (name, value) in lines {
        out.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    out
}

/// Replaces the `port` line of a rendered shoal.conf.
fn replace_port(conf: &str, port: u16) -> String {
    let mut found = false;
    let mut out: String = conf
        .lines()
        .map(|line| {
            let is_port = line
                .split_once('=')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("port"));
            if is_port {
                found = true;
                format!("port = '{port}'\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    if !found {
        out.push_str(&format!("port = '{port}'\n"));
    }
    out
}

/// Initialises `data_dir` (which must be missing or empty) and writes Shoal's configuration.
pub fn initdb(bins: &PgBinaries, data_dir: &Path, opts: &InitOptions) -> Result<()> {
    let data_dir = absolute(data_dir)?;
    let run_as = RunAs::server()?;
    if data_dir.exists() {
        let mut entries = fs::read_dir(&data_dir)
            .map_err(|e| LocalError::io(format!("could not read {}", data_dir.display()), e))?;
        if entries.next().is_some() {
            return Err(LocalError::DirNotEmpty { dir: data_dir });
        }
        run_as.chown(&data_dir)?;
    } else {
        run_as.create_dir_all(&data_dir)?;
    }
    run_as.check_writable(&data_dir)?;

    tracing::info!(data_dir = %data_dir.display(), "initdb");
    let mut cmd = run_as.command(bins.program("initdb"));
    cmd.arg("-D")
        .arg(&data_dir)
        .args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ])
        .env("LC_ALL", "C");
    if opts.no_sync {
        cmd.arg("--no-sync");
    }
    let out = cmd
        .output()
        .map_err(|e| LocalError::io("could not run initdb", e))?;
    check_output("initdb", &out)?;
    write_config(&data_dir, opts, &run_as)
}

fn write_config(data_dir: &Path, opts: &InitOptions, run_as: &RunAs) -> Result<()> {
    let main_conf = data_dir.join("postgresql.conf");
    let text = fs::read_to_string(&main_conf)
        .map_err(|e| LocalError::io(format!("could not read {}", main_conf.display()), e))?;
    if !text.lines().any(|l| l.trim() == INCLUDE_LINE) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&main_conf)
            .map_err(|e| LocalError::io(format!("could not open {}", main_conf.display()), e))?;
        let sep = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        writeln!(f, "{sep}{INCLUDE_LINE}")
            .map_err(|e| LocalError::io(format!("could not write {}", main_conf.display()), e))?;
    }
    let shoal_conf = data_dir.join(SHOAL_CONF);
    write_file(&shoal_conf, &render_shoal_conf(opts.port, &opts.settings))?;
    run_as.chown(&shoal_conf)
}

/// Sets the port of a configured data directory (e.g. a copied template).
pub fn set_port(data_dir: &Path, port: u16) -> Result<()> {
    let path = data_dir.join(SHOAL_CONF);
    if !path.is_file() {
        return Err(LocalError::NotConfigured(data_dir.to_path_buf()));
    }
    let text = fs::read_to_string(&path)
        .map_err(|e| LocalError::io(format!("could not read {}", path.display()), e))?;
    // Rewriting in place keeps the file's owner.
    write_file(&path, &replace_port(&text, port))
}

/// Reads the port from a configured data directory.
pub fn configured_port(data_dir: &Path) -> Result<u16> {
    let path = data_dir.join(SHOAL_CONF);
    let text =
        fs::read_to_string(&path).map_err(|_| LocalError::NotConfigured(data_dir.to_path_buf()))?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("port"))
        .filter_map(|(_, v)| v.trim().trim_matches('\'').parse().ok())
        .next_back()
        .ok_or_else(|| LocalError::NotConfigured(data_dir.to_path_buf()))
}

/// Starts the server and waits until it accepts connections (up to 60 s).
pub fn start(bins: &PgBinaries, data_dir: &Path, log_file: &Path) -> Result<()> {
    let data_dir = absolute(data_dir)?;
    let log_file = absolute(log_file)?;
    let run_as = RunAs::server()?;
    // pg_ctl opens the log as the server account, so create it and hand it over first.
    let log_start = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .and_then(|f| f.metadata())
        .map_err(|e| LocalError::io(format!("could not create {}", log_file.display()), e))?
        .len();
    run_as.chown(&log_file)?;

    tracing::info!(data_dir = %data_dir.display(), "starting PostgreSQL");
    let out = run_as
        .command(bins.program("pg_ctl"))
        .arg("-D")
        .arg(&data_dir)
        .arg("-l")
        .arg(&log_file)
        .args(["-w", "-t", "60", "start"])
        .output()
        .map_err(|e| LocalError::io("could not run pg_ctl", e))?;
    if out.status.success() {
        return Ok(());
    }
    // Only what this attempt logged: older runs' lines would hide the cause.
    let mut log_tail = tail(&log_file, log_start, LOG_TAIL_LINES);
    if log_tail.trim().is_empty() {
        log_tail = combined_output(&out);
    }
    Err(LocalError::StartFailed {
        data_dir,
        log_file,
        log_tail,
    })
}

/// Stops the server and waits until it has exited.
pub fn stop(bins: &PgBinaries, data_dir: &Path, mode: StopMode) -> Result<()> {
    let run_as = RunAs::server()?;
    let data_dir = absolute(data_dir)?;
    tracing::info!(data_dir = %data_dir.display(), mode = mode.as_arg(), "stopping PostgreSQL");
    // pg_ctl's own wait polls every 100 ms; polling the pid file ourselves ends sooner.
    let out = run_as
        .command(bins.program("pg_ctl"))
        .arg("-D")
        .arg(&data_dir)
        .args(["-m", mode.as_arg(), "-W", "stop"])
        .output()
        .map_err(|e| LocalError::io("could not run pg_ctl", e))?;
    check_output("pg_ctl stop", &out)?;
    // The postmaster removes its pid file as the very last step of shutting down.
    let pid_file = data_dir.join("postmaster.pid");
    let deadline = Instant::now() + STOP_TIMEOUT;
    while pid_file.exists() {
        if Instant::now() > deadline {
            return Err(LocalError::StopTimeout { data_dir });
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Whether a server is running on `data_dir` (`pg_ctl status` exits 0).
pub fn is_running(bins: &PgBinaries, data_dir: &Path) -> bool {
    let Ok(run_as) = RunAs::server() else {
        return false;
    };
    let Ok(data_dir) = absolute(data_dir) else {
        return false;
    };
    run_as
        .command(bins.program("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .arg("status")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Whether nothing listens on 127.0.0.1:`port` (checked by binding it).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| LocalError::io(format!("could not resolve {}", path.display()), e))
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents)
        .map_err(|e| LocalError::io(format!("could not write {}", path.display()), e))
}

fn check_output(program: &str, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(LocalError::Command {
        program: program.to_string(),
        status: out.status.to_string(),
        output: combined_output(out),
    })
}

/// The last lines of stderr and stdout joined on one line, for error messages.
fn combined_output(out: &Output) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The last `n` lines of a file from byte `from` on, or an empty string if it cannot be read.
fn tail(path: &Path, from: u64, n: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_defaults_and_overrides() {
        let conf = render_shoal_conf(
            5433,
            &[
                ("max_connections".into(), "100".into()),
                ("fsync".into(), "off".into()),
            ],
        );
        assert!(conf.contains("port = '5433'\n"));
        assert!(conf.contains("listen_addresses = '127.0.0.1'\n"));
        assert!(conf.contains("unix_socket_directories = ''\n"));
        assert!(conf.contains("wal_level = 'logical'\n"));
        assert!(conf.contains("wal_retrieve_retry_interval = '100ms'\n"));
        assert!(conf.contains("fsync = 'off'\n"));
        assert!(conf.contains("max_connections = '100'\n"));
        assert!(!conf.contains("max_connections = '200'"));
    }

    #[test]
    fn quotes_values() {
        let conf = render_shoal_conf(1, &[("application_name".into(), "it's".into())]);
        assert!(conf.contains("application_name = 'it''s'\n"));
    }

    #[test]
    fn replaces_port() {
        let conf = render_shoal_conf(5433, &[]);
        let new = replace_port(&conf, 6000);
        assert!(new.contains("port = '6000'\n"));
        assert!(!new.contains("5433"));
        assert_eq!(new.lines().count(), conf.lines().count());
        assert_eq!(
            replace_port("fsync = 'off'\n", 7),
            "fsync = 'off'\nport = '7'\n"
        );
    }

    #[test]
    fn reads_port_back() {
        let dir = std::env::temp_dir().join(format!("shoal-local-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(SHOAL_CONF), render_shoal_conf(5433, &[])).unwrap();
        set_port(&dir, 6001).unwrap();
        assert_eq!(configured_port(&dir).unwrap(), 6001);
        fs::remove_dir_all(&dir).unwrap();
    }
}
