//! Other PostgreSQL majors for clusters of mixed versions: fetched by the same script that
//! fetches them for the test matrix (`scripts/ensure-deps.sh --pg-bin MAJOR`).

use std::path::PathBuf;
use std::process::Command;

use crate::binaries;
use shoal_local::PgBinaries;

/// The binaries of PostgreSQL `major` (downloaded into the cache the first time).
pub fn binaries_of(major: u32) -> PgBinaries {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-deps.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--pg-bin")
        .arg(major.to_string())
        .output()
        .unwrap_or_else(|e| panic!("shoal-testkit: could not run {}: {e}", script.display()));
    let bindir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || bindir.is_empty() {
        panic!(
            "shoal-testkit: PostgreSQL {major} is not available: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    PgBinaries::at(bindir).unwrap_or_else(|e| panic!("shoal-testkit: {e}"))
}

/// A major other than the default binaries': 18 next to 15, else 15 (the oldest Shoal runs on
/// and the newest, so both directions of a mixed cluster get tested across the matrix).
pub fn other_major() -> PgBinaries {
    binaries_of(if binaries().major == 15 { 18 } else { 15 })
}

/// Whether these binaries were built with OpenSSL (some packaged builds were not).
pub fn supports_tls(bins: &PgBinaries) -> bool {
    Command::new(bins.bindir.join("pg_config"))
        .arg("--configure")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("--with-openssl"))
        .unwrap_or(false)
}

/// Binaries of 16 or newer built with OpenSSL: the default ones if they are, else 17's.
pub fn tls_binaries() -> PgBinaries {
    let default = binaries();
    if default.major >= 16 && supports_tls(default) {
        default.clone()
    } else {
        binaries_of(17)
    }
}
