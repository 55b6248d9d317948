//! The imperative shell of stream tables: change capture from every node into the coordinator's
//! change buffer, stream table creation and refresh, and the scheduler tick of `shoal serve`.
//! Everything it decides comes from the pure modules of this crate (`plan`, `refresh`,
//! `decode`, `topology`).

mod capture;
mod manage;
mod scheduler;

pub use capture::{parse_lsn, poll_all, PollReport};
pub use manage::{
    alter_stream, create_stream, drop_stream, list_streams, refresh_stream, StreamError,
    StreamInfo, StreamOptions,
};
pub use scheduler::{acquire_lease, release_lease, tick, SchedulerConfig, TickReport};
