//! Removing what killed test processes left behind: run and build directories whose
//! process is gone, with any server still running in them.

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::template::binaries;
use shoal_local::StopMode;

/// Sweeps `root`: every `run-<pid>-*` / `build-<pid>-*` entry whose pid no longer exists.
pub fn sweep_stale(root: &Path) {
    // One sweeper per process at a time; the others would only trip over its deletions.
    static SWEEPING: Mutex<()> = Mutex::new(());
    let _guard = SWEEPING.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if pid == std::process::id() || process_exists(pid) {
            continue;
        }
        let path = entry.path();
        tracing::info!(path = %path.display(), pid, "removing stale test directory");
        if path.is_dir() {
            stop_servers_in(&path);
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The pid in `run-<pid>-...` or `build-<pid>-...`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("run-")
        .or_else(|| name.strip_prefix("build-"))?;
    rest.split(['-', '.']).next()?.parse().ok()
}

fn process_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // EPERM means it exists but belongs to someone else.
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Immediate stop of every server whose data directory is `dir` or directly inside it.
fn stop_servers_in(dir: &Path) {
    let mut data_dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = fs::read_dir(dir) {
        data_dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for data_dir in data_dirs {
        if data_dir.join("postmaster.pid").exists()
            && shoal_local::is_running(binaries(), &data_dir)
        {
            if let Err(e) = shoal_local::stop(binaries(), &data_dir, StopMode::Immediate) {
                tracing::warn!(data_dir = %data_dir.display(), error = %e, "could not stop stale server");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owner_pids() {
        assert_eq!(owner_pid("run-123-4-abcd"), Some(123));
        assert_eq!(owner_pid("build-77-0badf00d"), Some(77));
        assert_eq!(owner_pid("build-77-0badf00d.log"), Some(77));
        assert_eq!(owner_pid("template-15-0011"), None);
        assert_eq!(owner_pid("run-x"), None);
    }
}
