//! Fault injection for tests and drills: the environment variable `SHOAL_FAILPOINTS` makes a
//! transfer pause or fail when it reaches a status, so that what happens at that moment (a
//! cancel, a node stopping, the process being killed) can be tried on real servers.
//!
//! `SHOAL_FAILPOINTS="pause:Copying Data"` pauses there until cancelled;
//! `"pause:Catching Up:2000"` pauses for two seconds; `"fail:Final Catchup"` fails there.
//! Several are separated by `;`.

use std::time::Duration;

use crate::status::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failpoint {
    Pause { at: Status, for_: Option<Duration> },
    Fail { at: Status },
}

/// Parses the variable's value; unknown entries are ignored (with a warning) so a typo never
/// breaks a real transfer.
pub fn parse(spec: &str) -> Vec<Failpoint> {
    spec.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let kind = parts.next()?;
            let Some(at) = parts.next().and_then(Status::parse) else {
                tracing::warn!(entry, "ignoring a failpoint with an unknown status");
                return None;
            };
            let millis = parts.next().and_then(|m| m.parse::<u64>().ok());
            match kind {
                "pause" => Some(Failpoint::Pause {
                    at,
                    for_: millis.map(Duration::from_millis),
                }),
                "fail" => Some(Failpoint::Fail { at }),
                _ => {
                    tracing::warn!(entry, "ignoring an unknown failpoint");
                    None
                }
            }
        })
        .collect()
}

pub fn from_env() -> Vec<Failpoint> {
    std::env::var("SHOAL_FAILPOINTS")
        .map(|s| parse(&s))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pauses_and_failures() {
        assert_eq!(
            parse("pause:Copying Data; fail:Final Catchup ;pause:Catching Up:250;bogus:x;pause:Nowhere"),
            vec![
                Failpoint::Pause { at: Status::CopyingData, for_: None },
                Failpoint::Fail { at: Status::FinalCatchup },
                Failpoint::Pause { at: Status::CatchingUp, for_: Some(Duration::from_millis(250)) },
            ]
        );
        assert!(parse("").is_empty());
    }
}
