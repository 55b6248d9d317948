//! libpq's password file (`~/.pgpass`, or the file `PGPASSFILE` names): lines of
//! `host:port:database:user:password`, `*` matching anything, `\:` and `\\` escaping, the
//! first matching line winning. A file that others may read is ignored, as libpq ignores it.

use std::path::{Path, PathBuf};

/// The file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub(crate) fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".pgpass")))
}

/// The password for this server and role in `path`, if the file exists and has a line for it.
pub(crate) fn read(path: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_file() {
        return None;
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "password file ignored: others may read it; chmod 0600 it"
        );
        return None;
    }
    let contents = std::fs::read_to_string(path).ok()?;
    lookup(&contents, host, port, dbname, user)
}

/// The first line of `contents` that matches.
pub(crate) fn lookup(
    contents: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    contents
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(split_line)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, value)| field == "*" || field == value)
        })
        .map(|mut fields| fields.pop().unwrap_or_default())
}

/// The first five fields of a line, unescaped; `None` for a line with fewer.
fn split_line(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut()?.push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    // As in libpq, an unescaped colon ends the password too; what follows it is ignored.
    fields.truncate(5);
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
        db.example:5432:shop:alice:first\n\
        *:5432:*:alice:second\n\
        10.0.0.2:*:*:bob:with\\:colon\\\\and:more\n";

    #[test]
    fn the_first_matching_line_wins() {
        assert_eq!(
            lookup(FILE, "db.example", 5432, "shop", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(FILE, "other", 5432, "shop", "alice").as_deref(),
            Some("second")
        );
        assert_eq!(lookup(FILE, "other", 6432, "shop", "alice"), None);
    }

    #[test]
    fn escapes_and_colons_in_the_password() {
        assert_eq!(
            lookup(FILE, "10.0.0.2", 1, "x", "bob").as_deref(),
            Some("with:colon\\and")
        );
    }

    #[test]
    fn short_lines_match_nothing() {
        assert_eq!(lookup("a:b:c\n", "a", 1, "c", "d"), None);
    }
}
