//! The account PostgreSQL processes run as: PostgreSQL refuses to run as root, so a root
//! caller hands its servers to the `postgres` account.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::unistd::{self, Gid, Uid, User};

use crate::error::{LocalError, Result};

const SERVER_ACCOUNT: &str = "postgres";

/// Who runs initdb, pg_ctl and postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The current (non-root) user.
    Current,
    /// Another account, switched to in the child (the caller is root).
    Account {
        name: String,
        uid: u32,
        gid: u32,
        home: PathBuf,
    },
}

impl RunAs {
    /// The account for server processes: the current user, or `postgres` (created if missing)
    /// when running as root.
    pub fn server() -> Result<RunAs> {
        if !Uid::effective().is_root() {
            return Ok(RunAs::Current);
        }
        // Cache the lookup: it may run useradd, and callers ask for every command.
        static CACHE: Mutex<Option<RunAs>> = Mutex::new(None);
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run_as) = cache.as_ref() {
            return Ok(run_as.clone());
        }
        let user = match lookup(SERVER_ACCOUNT)? {
            Some(user) => user,
            None => {
                create_account()?;
                lookup(SERVER_ACCOUNT)?.ok_or_else(|| LocalError::ServerUser {
                    reason: "useradd succeeded but the account is still unknown".into(),
                })?
            }
        };
        let run_as = RunAs::Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        };
        *cache = Some(run_as.clone());
        Ok(run_as)
    }

    /// Name to show in messages.
    pub fn name(&self) -> String {
        match self {
            RunAs::Current => User::from_uid(Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {}", Uid::effective())),
            RunAs::Account { name, .. } => name.clone(),
        }
    }

    /// A command that runs as this account, from `/` so an unreadable current directory
    /// does not bother it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir("/");
        if let RunAs::Account {
            name,
            uid,
            gid,
            home,
        } = self
        {
            // std clears supplementary groups itself when uid is set by root.
            cmd.gid(*gid).uid(*uid);
            // The caller's HOME would be root's: libpq inside the server (postgres_fdw,
            // subscriptions) reads ~/.postgresql and ~/.pgpass and fails on files it may not read.
            cmd.env("HOME", home).env("USER", name).env("LOGNAME", name);
        }
        cmd
    }

    /// Gives `path` to this account (no-op for the current user).
    pub fn chown(&self, path: &Path) -> Result<()> {
        if let RunAs::Account { uid, gid, .. } = self {
            unistd::chown(path, Some(Uid::from_raw(*uid)), Some(Gid::from_raw(*gid))).map_err(
                |e| LocalError::io(format!("could not chown {}", path.display()), e.into()),
            )?;
        }
        Ok(())
    }

    /// Creates `dir` and any missing parents, giving each directory created here to this
    /// account.
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let mut missing: Vec<PathBuf> = Vec::new();
        let mut cur = Some(dir);
        while let Some(p) = cur {
            if p.exists() {
                break;
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        fs::create_dir_all(dir)
            .map_err(|e| LocalError::io(format!("could not create {}", dir.display()), e))?;
        for p in missing.iter().rev() {
            self.chown(p)?;
        }
        Ok(())
    }

    /// Whether this account can enter and write `dir` (which must exist).
    pub fn can_write(&self, dir: &Path) -> Result<bool> {
        if *self == RunAs::Current {
            return Ok(true);
        }
        let status = self
            .command("test")
            .arg("-w")
            .arg(dir)
            .args(["-a", "-x"])
            .arg(dir)
            .status()
            .map_err(|e| LocalError::io("could not run `test`", e))?;
        Ok(status.success())
    }

    /// Fails with a helpful error when this account cannot enter and write `dir`.
    pub fn check_writable(&self, dir: &Path) -> Result<()> {
        if self.can_write(dir)? {
            Ok(())
        } else {
            Err(LocalError::DirNotAccessible {
                dir: dir.to_path_buf(),
                user: self.name(),
            })
        }
    }
}

fn lookup(name: &str) -> Result<Option<User>> {
    User::from_name(name).map_err(|e| LocalError::ServerUser {
        reason: format!("looking up `{name}`: {e}"),
    })
}

fn create_account() -> Result<()> {
    tracing::info!("creating the `{SERVER_ACCOUNT}` account to run PostgreSQL");
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_ACCOUNT,
        ])
        .output()
        .map_err(|e| LocalError::ServerUser {
            reason: format!("could not run useradd: {e}"),
        })?;
    // Another process may have created it meanwhile; the caller looks it up again.
    if !out.status.success() && lookup(SERVER_ACCOUNT)?.is_none() {
        return Err(LocalError::ServerUser {
            reason: format!(
                "useradd failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
