//! The imperative shell of stream tables: change capture from every node into the coordinator's
//! change buffer, stream table creation and refresh, the move of old stream tables to the
//! current layout, and the scheduler tick of `shoal serve`. Everything it decides comes from
//! the pure modules of this crate (`plan`, `refresh`, `layout`, `decode`, `topology`).

mod capture;
mod manage;
mod refresh;
mod scheduler;
mod upgrade;

pub use capture::{parse_lsn, poll_all, PollReport};
pub use manage::{
    alter_stream, create_stream, drop_stream, list_streams, StreamError, StreamInfo, StreamOptions,
};
pub use refresh::{refresh_stream, RefreshReport};
pub use scheduler::{acquire_lease, release_lease, tick, SchedulerConfig, TickReport};
pub use upgrade::{upgrade_layouts, Upgraded};
