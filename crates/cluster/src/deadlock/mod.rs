//! Deadlocks across servers. Each PostgreSQL server detects the deadlocks among its own
//! backends, but a cycle through two servers (session A waits on node 1 for a row B locked
//! there, B waits on node 2 for a row A locked there) shows each server only a backend
//! waiting for one that is idle in its transaction: nobody would ever end it. Shoal knows which
//! backends on every server work for which client session (an endpoint knows its own; a
//! coordinator session's postgres_fdw connections carry its process id in their
//! `application_name`), so it joins the servers' waits into one graph between sessions, and a
//! cycle there that no single server sees is such a deadlock. It then does what one server
//! would: cancels one waiting statement of the cycle, whose transaction fails; the others go
//! on.
//!
//! - pure: `graph` (the graph, its cycles, the victim, the two-round rule);
//! - the shell: `watch` (reading the servers' waits, cancelling).

pub mod graph;
pub mod watch;

pub use graph::{Detection, Holders, Owner, Session, Victim, Wait};
pub use watch::{watch, CoordinatorOnly, Sessions, COORDINATOR_APPLICATION_NAME};
