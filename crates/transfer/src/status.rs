//! The statuses a transfer goes through, and the choice of mode. Pure.

use serde::Serialize;

/// Where a transfer is, in the order it gets there. `Failed` can follow any status but
/// `Completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Status {
    NotStartedYet,
    SettingUp,
    CopyingData,
    CatchingUp,
    CreatingConstraints,
    FinalCatchup,
    CreatingForeignKeys,
    Completing,
    Completed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::NotStartedYet,
        Status::SettingUp,
        Status::CopyingData,
        Status::CatchingUp,
        Status::CreatingConstraints,
        Status::FinalCatchup,
        Status::CreatingForeignKeys,
        Status::Completing,
        Status::Completed,
        Status::Failed,
    ];

    /// The text stored in the catalog and shown to users (Citus's wording, so that operators
    /// who know one know the other).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotStartedYet => "Not Started Yet",
            Status::SettingUp => "Setting Up",
            Status::CopyingData => "Copying Data",
            Status::CatchingUp => "Catching Up",
            Status::CreatingConstraints => "Creating Constraints",
            Status::FinalCatchup => "Final Catchup",
            Status::CreatingForeignKeys => "Creating Foreign Keys",
            Status::Completing => "Completing",
            Status::Completed => "Completed",
            Status::Failed => "Failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// Move: the group leaves the source. Copy: the source keeps it (reference tables only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Move,
    Copy,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Move => "move",
            Operation::Copy => "copy",
        }
    }
}

/// How rows are transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Logical when possible, else block_writes.
    Auto,
    /// Logical replication: writes continue until a short cutover.
    ForceLogical,
    /// Writes to the group wait for the whole copy.
    BlockWrites,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::ForceLogical => "force_logical",
            Mode::BlockWrites => "block_writes",
        }
    }
}

/// The mode a transfer runs in, and why when `auto` had to fall back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenMode {
    pub mode: Mode,
    pub reason: Option<String>,
}

/// Logical replication applies updates and deletes only to tables with a replica identity; a
/// group with one table without it is moved with writes blocked under `auto`, and refused under
/// `force_logical`.
///
/// `logical_refused`: why logical replication cannot be used with this role between these
/// nodes (a missing privilege), if it cannot.
pub fn choose_mode(
    requested: Mode,
    tables_without_identity: &[String],
    logical_refused: Option<&str>,
) -> Result<ChosenMode, String> {
    if let (Some(why), Mode::Auto | Mode::ForceLogical) = (logical_refused, requested) {
        return match requested {
            Mode::ForceLogical => Err(format!(
                "an online move needs logical replication, and {why}; or use --mode block_writes"
            )),
            _ => Ok(ChosenMode {
                mode: Mode::BlockWrites,
                reason: Some(format!(
                    "logical replication is not available ({why}), so writes are blocked during the copy"
                )),
            }),
        };
    }
    match (requested, tables_without_identity.is_empty()) {
        (Mode::BlockWrites, _) => Ok(ChosenMode {
            mode: Mode::BlockWrites,
            reason: None,
        }),
        (Mode::Auto | Mode::ForceLogical, true) => Ok(ChosenMode {
            mode: Mode::ForceLogical,
            reason: None,
        }),
        (Mode::Auto, false) => Ok(ChosenMode {
            mode: Mode::BlockWrites,
            reason: Some(format!(
                "{} has no primary key or replica identity, so writes are blocked during the copy",
                tables_without_identity.join(", ")
            )),
        }),
        (Mode::ForceLogical, false) => Err(format!(
            "{} has no primary key or replica identity, which logical replication needs; add one, \
             or use --mode block_writes",
            tables_without_identity.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_in_order() {
        for pair in Status::ALL.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("nonsense"), None);
        assert!(Status::Completed.is_finished() && Status::Failed.is_finished());
        assert!(!Status::FinalCatchup.is_finished());
    }

    #[test]
    fn auto_falls_back_and_says_why() {
        let chosen = choose_mode(Mode::Auto, &[], None).unwrap();
        assert_eq!(
            chosen,
            ChosenMode {
                mode: Mode::ForceLogical,
                reason: None
            }
        );
        let chosen = choose_mode(Mode::Auto, &["public.t".into()], None).unwrap();
        assert_eq!(chosen.mode, Mode::BlockWrites);
        assert!(chosen.reason.unwrap().contains("public.t"));
        assert!(choose_mode(Mode::ForceLogical, &["public.t".into()], None).is_err());
        assert_eq!(
            choose_mode(Mode::BlockWrites, &[], None).unwrap().mode,
            Mode::BlockWrites
        );
    }

    #[test]
    fn without_the_privileges_for_logical_replication_auto_blocks_writes() {
        let why = "PostgreSQL 15 lets only superusers create subscriptions";
        let chosen = choose_mode(Mode::Auto, &[], Some(why)).unwrap();
        assert_eq!(chosen.mode, Mode::BlockWrites);
        assert!(chosen.reason.unwrap().contains(why));
        let refused = choose_mode(Mode::ForceLogical, &[], Some(why)).unwrap_err();
        assert!(
            refused.contains(why) && refused.contains("--mode block_writes"),
            "{refused}"
        );
        assert_eq!(
            choose_mode(Mode::BlockWrites, &[], Some(why)).unwrap().mode,
            Mode::BlockWrites
        );
    }
}
