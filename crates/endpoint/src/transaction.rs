//! A client's transaction as the endpoint sees it: which path it took and who takes part. Pure:
//! the session asks where a statement goes and is told, or gets the error PostgreSQL-minded
//! clients should see, before anything is sent.
//!
//! A transaction block starts undecided (its `BEGIN` is held back). Its first statement
//! decides the path: the coordinator's (PostgreSQL and postgres_fdw run it, and every later
//! statement goes there too, routable or not), or the participants' (statements routed to
//! nodes, and reference-table writes on the coordinator, each participant a transaction of
//! its own opened with the client's `BEGIN`). A statement that needs the coordinator's path
//! in a transaction on the participants' is refused: its postgres_fdw transaction would not
//! see the participants' uncommitted rows, and would wait on their locks.

use crate::control::Isolation;
use crate::error::ServerError;
use shoal_route::Place;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `BEGIN` seen, no statement yet.
    Undecided,
    /// The coordinator's session runs the transaction.
    Coordinator,
    /// Routed statements, on these participants in the order they joined.
    Participants(Vec<Place>),
}

#[derive(Debug, Clone)]
pub struct Transaction {
    /// The client's `BEGIN`, replayed on each participant.
    pub begin: String,
    pub isolation: Isolation,
    pub path: Path,
    /// An error happened: everything but the end of the block is refused.
    pub failed: bool,
    pub savepoints: Vec<String>,
    /// A reference table was written on the coordinator: replicas on the nodes are behind.
    pub wrote_reference: bool,
}

/// Where the session sends a statement, as decided by [`Transaction::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// To the coordinator's session; `begin_first` when the held-back BEGIN must go first.
    Coordinator { begin_first: bool },
    /// To a participant; `join` when it must first be opened with BEGIN and the savepoints.
    Participant { place: Place, join: bool },
}

/// What a statement needs, from the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Coordinator,
    Participant {
        place: Place,
        reads_reference_replica: bool,
        writes_reference: bool,
    },
}

impl Transaction {
    pub fn begin(sql: String, isolation: Isolation) -> Transaction {
        Transaction {
            begin: sql,
            isolation,
            path: Path::Undecided,
            failed: false,
            savepoints: Vec::new(),
            wrote_reference: false,
        }
    }

    pub fn participants(&self) -> &[Place] {
        match &self.path {
            Path::Participants(p) => p,
            _ => &[],
        }
    }

    /// Where a statement of this transaction goes; the transaction records the decision.
    pub fn route(&mut self, need: Need, why_coordinator: &str) -> Result<Step, ServerError> {
        if self.failed {
            return Err(aborted());
        }
        match (&mut self.path, need) {
            (Path::Coordinator, _) => Ok(Step::Coordinator { begin_first: false }),
            (Path::Undecided, Need::Coordinator) => {
                self.path = Path::Coordinator;
                Ok(Step::Coordinator { begin_first: true })
            }
            (Path::Participants(_), Need::Coordinator) => Err(ServerError::new(
                "0A000",
                format!(
                    "this statement needs the coordinator ({why_coordinator}), but the \
                     transaction already runs on the shards its earlier statements were routed to"
                ),
            )
            .with_hint(
                "Run it in a transaction of its own, start the transaction with it, or connect \
                 to the coordinator for this transaction.",
            )),
            (
                path,
                Need::Participant {
                    place,
                    reads_reference_replica,
                    writes_reference,
                },
            ) => {
                if reads_reference_replica && self.wrote_reference {
                    return Err(ServerError::new(
                        "0A000",
                        "this statement reads a reference table on a node, and the transaction \
                         wrote reference tables, whose node copies follow only after it commits",
                    )
                    .with_hint(
                        "Read the reference table in a statement of its own, or commit first.",
                    ));
                }
                let participants = match path {
                    Path::Participants(p) => p,
                    _ => {
                        *path = Path::Participants(Vec::new());
                        match path {
                            Path::Participants(p) => p,
                            _ => unreachable!(),
                        }
                    }
                };
                let join = !participants.contains(&place);
                if join && !participants.is_empty() && self.isolation != Isolation::ReadCommitted {
                    return Err(ServerError::new(
                        "0A000",
                        format!(
                            "a {} transaction through Shoal's endpoint reads one server's snapshot, \
                             and this statement needs another server",
                            isolation_name(self.isolation)
                        ),
                    )
                    .with_hint(
                        "Use READ COMMITTED, keep the transaction to one shard group, or connect \
                         to the coordinator.",
                    ));
                }
                if join {
                    participants.push(place);
                }
                if writes_reference {
                    self.wrote_reference = true;
                }
                Ok(Step::Participant { place, join })
            }
        }
    }

    /// The transaction after an error: nothing more runs until its end.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// The error every statement of a failed transaction gets, as PostgreSQL words it.
    pub fn check_not_failed(&self) -> Result<(), ServerError> {
        if self.failed {
            Err(aborted())
        } else {
            Ok(())
        }
    }

    /// Records a savepoint that every participant now has.
    pub fn savepoint(&mut self, name: &str) {
        self.savepoints.push(name.to_string());
    }

    /// `ROLLBACK TO name` keeps the savepoint; `RELEASE name` drops it and later ones. `false`
    /// when no such savepoint exists (the participants say so in PostgreSQL's words).
    pub fn unwind_to(&mut self, name: &str, release: bool) -> bool {
        match self.savepoints.iter().rposition(|s| s == name) {
            Some(i) => {
                self.savepoints.truncate(if release { i } else { i + 1 });
                if !release {
                    self.failed = false;
                }
                true
            }
            None => false,
        }
    }
}

fn aborted() -> ServerError {
    ServerError::new(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn isolation_name(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::ReadCommitted => "READ COMMITTED",
        Isolation::RepeatableRead => "REPEATABLE READ",
        Isolation::Serializable => "SERIALIZABLE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i32) -> Need {
        Need::Participant {
            place: Place::Node(id),
            reads_reference_replica: false,
            writes_reference: false,
        }
    }

    #[test]
    fn the_first_statement_picks_the_path() {
        let mut t = Transaction::begin("BEGIN".into(), Isolation::ReadCommitted);
        assert_eq!(
            t.route(Need::Coordinator, "").unwrap(),
            Step::Coordinator { begin_first: true }
        );
        // Routable statements follow the coordinator once it has the transaction.
        assert_eq!(
            t.route(node(1), "").unwrap(),
            Step::Coordinator { begin_first: false }
        );

        let mut t = Transaction::begin("BEGIN".into(), Isolation::ReadCommitted);
        assert_eq!(
            t.route(node(1), "").unwrap(),
            Step::Participant {
                place: Place::Node(1),
                join: true
            }
        );
        assert_eq!(
            t.route(node(1), "").unwrap(),
            Step::Participant {
                place: Place::Node(1),
                join: false
            }
        );
        assert_eq!(
            t.route(node(2), "").unwrap(),
            Step::Participant {
                place: Place::Node(2),
                join: true
            }
        );
        assert_eq!(t.participants(), &[Place::Node(1), Place::Node(2)]);
        let error = t
            .route(Need::Coordinator, "it scans every shard")
            .unwrap_err();
        assert_eq!(error.sqlstate(), "0A000");
        assert!(error.message().contains("it scans every shard"), "{error}");
    }

    #[test]
    fn repeatable_read_stays_on_one_server() {
        let mut t = Transaction::begin(
            "BEGIN ISOLATION LEVEL REPEATABLE READ".into(),
            Isolation::RepeatableRead,
        );
        t.route(node(1), "").unwrap();
        t.route(node(1), "").unwrap();
        let error = t.route(node(2), "").unwrap_err();
        assert!(error.message().contains("REPEATABLE READ"), "{error}");
        assert_eq!(t.participants(), &[Place::Node(1)]);
    }

    #[test]
    fn replicas_are_not_read_after_a_reference_write() {
        let mut t = Transaction::begin("BEGIN".into(), Isolation::ReadCommitted);
        let write = Need::Participant {
            place: Place::Coordinator,
            reads_reference_replica: false,
            writes_reference: true,
        };
        t.route(write, "").unwrap();
        let read = Need::Participant {
            place: Place::Node(1),
            reads_reference_replica: true,
            writes_reference: false,
        };
        assert!(t
            .route(read, "")
            .unwrap_err()
            .message()
            .contains("reference"));
        t.route(node(1), "").unwrap();
    }

    #[test]
    fn a_failed_transaction_refuses_until_rolled_back_to_a_savepoint() {
        let mut t = Transaction::begin("BEGIN".into(), Isolation::ReadCommitted);
        t.route(node(1), "").unwrap();
        t.savepoint("a");
        t.savepoint("b");
        t.fail();
        assert_eq!(t.route(node(1), "").unwrap_err().sqlstate(), "25P02");
        assert!(t.unwind_to("a", false));
        assert_eq!(t.savepoints, vec!["a".to_string()]);
        t.route(node(1), "").unwrap();
        assert!(t.unwind_to("a", true));
        assert!(t.savepoints.is_empty());
        assert!(!t.unwind_to("a", true));
    }
}
