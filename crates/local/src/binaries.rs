//! Finding the system's PostgreSQL server binaries.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LocalError, Result};

/// Lowest PostgreSQL major version Shoal runs on.
pub const MIN_MAJOR: u32 = 15;

/// Programs every bin directory must hold.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// A directory of PostgreSQL server binaries and the version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub major: u32,
    /// Full version as printed by `postgres --version`, e.g. "15.18".
    pub version: String,
}

impl PgBinaries {
    /// Finds the binaries: `SHOAL_PG_BIN`, else `pg_config --bindir`, else the directory of
    /// `initdb` on PATH, else the newest `/usr/lib/postgresql/<major>/bin`.
    pub fn discover() -> Result<PgBinaries> {
        if let Some(dir) = env::var_os("SHOAL_PG_BIN").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            if let Some(program) = REQUIRED.iter().find(|p| !dir.join(p).is_file()) {
                return Err(LocalError::PgBinMissing {
                    dir,
                    program: program.to_string(),
                });
            }
            return PgBinaries::at(dir);
        }

        let mut searched = Vec::new();
        let candidates = [
            pg_config_bindir(),
            initdb_on_path(),
            newest_debian_bindir(Path::new("/usr/lib/postgresql")),
        ];
        let labels = [
            "pg_config --bindir",
            "initdb on PATH",
            "/usr/lib/postgresql/*/bin",
        ];
        for (candidate, label) in candidates.into_iter().zip(labels) {
            match candidate {
                Some(dir) if has_required(&dir) => return PgBinaries::at(dir),
                Some(dir) => searched.push(format!("{} ({label})", dir.display())),
                None => searched.push(label.to_string()),
            }
        }
        Err(LocalError::PgNotFound {
            searched: searched.join(", "),
        })
    }

    /// Uses the binaries in `bindir`, checking their version.
    pub fn at(bindir: impl Into<PathBuf>) -> Result<PgBinaries> {
        let bindir = bindir.into();
        let program = bindir.join("postgres");
        let out = Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| LocalError::io(format!("could not run {}", program.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let Some((major, version)) = parse_version(&text).filter(|_| out.status.success()) else {
            return Err(LocalError::PgVersion {
                program,
                output: text,
            });
        };
        if major < MIN_MAJOR {
            return Err(LocalError::PgTooOld { bindir, version });
        }
        tracing::debug!(bindir = %bindir.display(), %version, "found PostgreSQL");
        Ok(PgBinaries {
            bindir,
            major,
            version,
        })
    }

    /// Path of one program in the bin directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn has_required(dir: &Path) -> bool {
    REQUIRED.iter().all(|p| dir.join(p).is_file())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn initdb_on_path() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .find(|p| p.is_file())
        // Debian links /usr/bin/initdb-like wrappers to the real bin directory.
        .and_then(|p| fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

fn newest_debian_bindir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let major: u32 = name.to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join(OsStr::new("postgres")).is_file())
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// Parses `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` into (15, "15.18").
fn parse_version(text: &str) -> Option<(u32, String)> {
    let rest = text.split("(PostgreSQL)").nth(1)?.trim_start();
    let version = rest.split_whitespace().next()?.to_string();
    // Development builds print e.g. "17devel": the major is the leading digits.
    let digits: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().ok()?;
    Some((major, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some((15, "15.18".to_string()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17devel"),
            Some((17, "17devel".to_string()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 9.6.24"),
            Some((9, "9.6.24".to_string()))
        );
        assert_eq!(parse_version("something else"), None);
    }
}
