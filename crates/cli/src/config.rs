//! Finding the coordinator: flag, environment, or config file.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Coordinator URI.
    pub coordinator: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// The coordinator URI from, in order: `--coordinator` / SHOAL_COORDINATOR, the config file.
pub fn coordinator_uri(flag: Option<&str>, config: Option<&Path>) -> anyhow::Result<String> {
    if let Some(uri) = flag {
        return Ok(uri.to_string());
    }
    if let Some(path) = config {
        if let Some(uri) = ConfigFile::load(path)?.coordinator {
            return Ok(uri);
        }
    }
    bail!(
        "no coordinator given; pass --coordinator URI, set SHOAL_COORDINATOR (e.g. `. DIR/shoal.env` \
         after `shoal local up`), or put `coordinator = \"URI\"` in the --config file"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_config() {
        assert_eq!(
            coordinator_uri(Some("postgresql://a@b/c"), None).unwrap(),
            "postgresql://a@b/c"
        );
    }

    #[test]
    fn config_file_is_read() {
        let path =
            std::env::temp_dir().join(format!("shoal-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, "coordinator = \"postgresql://x@127.0.0.1:1/db\"\n").unwrap();
        assert_eq!(
            coordinator_uri(None, Some(&path)).unwrap(),
            "postgresql://x@127.0.0.1:1/db"
        );
        std::fs::write(&path, "coordinatr = 1\n").unwrap();
        assert!(coordinator_uri(None, Some(&path)).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn nothing_given_says_what_to_do() {
        let error = coordinator_uri(None, None).unwrap_err().to_string();
        assert!(error.contains("SHOAL_COORDINATOR"));
    }
}
