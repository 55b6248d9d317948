//! The template data directory: initdb'd once per machine, PostgreSQL version and server
//! account, then copied for every test server (a copy starts far faster than an initdb).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::sys::statfs::statfs;
use nix::sys::statvfs::statvfs;
use nix::unistd::AccessFlags;

use crate::ports;
use shoal_local::{InitOptions, PgBinaries, RunAs, StopMode};

/// Database every test server has.
pub const DBNAME: &str = "shoal";

/// Bump when the template's contents or settings change, so old templates are not reused.
const TEMPLATE_FORMAT: &str = "2";

/// Settings for throwaway test servers: durability off, small memory.
pub fn test_settings() -> Vec<(String, String)> {
    [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("shared_buffers", "32MB"),
        ("max_connections", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The binaries every test server uses, found once per process.
pub fn binaries() -> &'static PgBinaries {
    static BINS: OnceLock<PgBinaries> = OnceLock::new();
    BINS.get_or_init(|| PgBinaries::discover().unwrap_or_else(|e| panic!("shoal-testkit: {e}")))
}

/// The account servers run as, resolved once per process.
pub fn run_as() -> &'static RunAs {
    static RUN_AS: OnceLock<RunAs> = OnceLock::new();
    RUN_AS.get_or_init(|| RunAs::server().unwrap_or_else(|e| panic!("shoal-testkit: {e}")))
}

/// Directory holding the template and every run: `$SHOAL_TESTKIT_DIR` if set, else
/// `/dev/shm/shoal-testkit` when /dev/shm is a roomy tmpfs, else `temp_dir()/shoal-testkit`.
/// Shared by every user of the machine like /tmp itself.
pub fn root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| match std::env::var_os("SHOAL_TESTKIT_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => fast_temp_dir().join("shoal-testkit"),
    });
    if !root.is_dir() {
        if let Err(e) = fs::create_dir_all(root) {
            panic!("shoal-testkit: could not create {}: {e}", root.display());
        }
        // Sticky and world-writable, so runs as another user (or as root) can share it.
        let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o1777));
    }
    root.clone()
}

/// Free space /dev/shm must have to be used (a few dozen servers of ~50 MB each).
const MIN_SHM_BYTES: u64 = 2 << 30;

/// /dev/shm if it is a tmpfs with room, else `temp_dir()`: creating files on a disk file
/// system can cost a millisecond each, which made copying the template (~1300 files) take
/// most of a second per server; on tmpfs the copy takes a few milliseconds.
fn fast_temp_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let is_tmpfs = statfs(shm).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    // The field types differ between platforms, hence the conversions.
    #[allow(clippy::useless_conversion)]
    let roomy = statvfs(shm).is_ok_and(|s| {
        u64::from(s.blocks_available()) * u64::from(s.fragment_size()) >= MIN_SHM_BYTES
    });
    let writable = nix::unistd::access(shm, AccessFlags::W_OK | AccessFlags::X_OK).is_ok();
    if is_tmpfs && roomy && writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The template directory of the default binaries (see [`template_for`]).
pub fn template() -> PathBuf {
    template_for(binaries())
}

/// The template directory of some binaries, built on first use (once per process, and across
/// processes only by whoever wins the final rename).
pub fn template_for(bins: &PgBinaries) -> PathBuf {
    static TEMPLATES: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut templates = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    templates
        .entry(bins.bindir.clone())
        .or_insert_with(|| {
            let uid = match run_as() {
                RunAs::Account { uid, .. } => *uid,
                RunAs::Current => nix::unistd::geteuid().as_raw(),
            };
            let key = format!(
                "{}\0{}\0{uid}\0{TEMPLATE_FORMAT}",
                bins.bindir.display(),
                bins.version
            );
            let path = root().join(format!(
                "template-{}-{:016x}",
                bins.major,
                fnv1a(key.as_bytes())
            ));
            if !is_complete(&path) {
                build(bins, &path);
            }
            path
        })
        .clone()
}

fn is_complete(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file() && dir.join(shoal_local::SHOAL_CONF).is_file()
}

/// initdb into a private directory, create the database, stop cleanly, rename into place.
fn build(bins: &PgBinaries, target: &Path) {
    let name = format!("build-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let dir = root().join(&name);
    let log = root().join(format!("{name}.log"));
    let result = build_in(bins, &dir, &log);
    let _ = fs::remove_file(&log);
    if let Err(message) = result {
        if shoal_local::is_running(bins, &dir) {
            let _ = shoal_local::stop(bins, &dir, StopMode::Immediate);
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("shoal-testkit: could not build the template data directory: {message}");
    }
    if let Err(e) = fs::rename(&dir, target) {
        // Lost the race to another process: use its template and drop ours.
        let _ = fs::remove_dir_all(&dir);
        if !is_complete(target) {
            panic!(
                "shoal-testkit: could not move the template into {}: {e}",
                target.display()
            );
        }
    }
}

fn build_in(bins: &PgBinaries, dir: &Path, log: &Path) -> Result<(), String> {
    let opts = InitOptions {
        // Replaced by a free port at start, and again in every copy.
        port: 5432,
        no_sync: true,
        settings: test_settings(),
    };
    shoal_local::initdb(bins, dir, &opts).map_err(|e| e.to_string())?;
    let port = crate::start_on_free_port(bins, dir, log)?;
    // A private runtime: this may run inside a caller's runtime or none at all.
    let created = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(shoal_local::create_database(port, DBNAME))
                .map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("creating the database panicked".into()))
    });
    ports::release(port);
    created?;
    shoal_local::stop(bins, dir, StopMode::Fast).map_err(|e| e.to_string())
}

/// 64-bit FNV-1a: a hash that stays the same across Rust versions, unlike DefaultHasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
