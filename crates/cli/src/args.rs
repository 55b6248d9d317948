use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Shoal turns plain PostgreSQL servers into one sharded database.
///
/// Connect to the coordinator with any PostgreSQL client and use plain SQL; use this tool to
/// manage nodes and to distribute tables. The coordinator is given by --coordinator, the
/// SHOAL_COORDINATOR environment variable, or the config file.
///
/// Passwords come from the URI, PGPASSWORD or the password file (~/.pgpass, PGPASSFILE). TLS
/// follows libpq: sslmode (disable, prefer, require, verify-ca, verify-full) and sslrootcert in
/// the URI or PGSSLMODE/PGSSLROOTCERT; the servers' connections to each other take
/// SHOAL_SERVER_SSLMODE and SHOAL_SERVER_SSLROOTCERT (a path on the servers, or `system`).
#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Coordinator connection URI, e.g. postgresql://postgres@127.0.0.1:9700/shoal or
    /// postgresql://admin@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem
    #[arg(
        long,
        global = true,
        env = "SHOAL_COORDINATOR",
        value_name = "URI",
        hide_env_values = true
    )]
    pub coordinator: Option<String>,

    /// TOML config file (keys: coordinator)
    #[arg(
        long,
        global = true,
        env = "SHOAL_CONFIG",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,

    /// More log output on stderr (-v: progress, -vv: debug); SHOAL_LOG overrides (a tracing
    /// filter such as `debug`; naming tokio_postgres logs SQL text, passwords in DDL included)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or migrate the catalog (schema `shoal`) in the coordinator database; idempotent
    Init,
    /// Run a coordinator and workers on this machine from the system's PostgreSQL
    #[command(subcommand)]
    Local(LocalCommand),
    /// Register, list and remove worker nodes
    #[command(subcommand)]
    Node(NodeCommand),
    /// Distribute tables, make reference tables, list them
    #[command(subcommand)]
    Table(TableCommand),
    /// List shards and where they live
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Distributed (tenant) schemas: every table of the schema together on one node
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Remove objects left on nodes by failed or finished operations (safe to run any time)
    Cleanup(CleanupArgs),
    /// Plan and run the moves that balance shard groups over the nodes, as a background job
    #[command(subcommand)]
    Rebalance(crate::rebalance::RebalanceCommand),
    /// Background jobs (rebalances, drains) and their tasks
    #[command(subcommand)]
    Job(crate::jobs::JobCommand),
    /// Start a local cluster with 2 workers, build a small shop on it and show where rows live
    Demo(DemoArgs),
    /// Run the daemon: the PostgreSQL endpoint for applications, background jobs, stream
    /// refreshes, cleanup, deadlock detection across nodes and metrics
    Serve(ServeArgs),
    /// Stream tables: query results over distributed tables, kept up to date incrementally
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Run DDL, including what the coordinator refuses on distributed tables
    Ddl(DdlArgs),
    /// Show where a query runs: through Shoal's endpoint (one node, split across the nodes,
    /// the coordinator, or refused, and why) and through the coordinator (what each worker runs, how
    /// many rows it ships, what the coordinator does itself)
    Explain(ExplainArgs),
    // Its help is `AnalyzeArgs`'s (the methods by version).
    Analyze(crate::analyze::AnalyzeArgs),
}

/// The endpoint's part is its router's decision for a statement outside a transaction block;
/// the coordinator's is PostgreSQL's plan (EXPLAIN VERBOSE), summed up by worker. Names are
/// resolved with the connection's search_path. A query with parameters ($1) cannot be planned
/// here: write the values in.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    shoal explain 'SELECT count(*) FROM orders'\n  \
    shoal explain --analyze 'SELECT o.id, sum(i.qty) FROM orders o JOIN order_items i ON i.order_id = o.id GROUP BY o.id ORDER BY 2 DESC LIMIT 10'\n  \
    shoal explain --json 'SELECT * FROM orders WHERE id = 42'")]
pub struct ExplainArgs {
    /// The query, as an application would send it
    pub sql: String,
    /// Run it on the coordinator to count the rows each worker ships (EXPLAIN ANALYZE, in a
    /// transaction that is rolled back, so a write changes nothing)
    #[arg(long)]
    pub analyze: bool,
    /// Also print the coordinator's whole plan
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Plain SQL on the coordinator already reaches every shard. This runs, in addition, what
/// PostgreSQL refuses on a distributed table (a partitioned table over foreign tables): unique
/// constraints and primary keys (they must include the distribution column), foreign keys to
/// reference tables or colocated tables, unique indexes, and CREATE/DROP INDEX CONCURRENTLY,
/// which builds the index on every shard without blocking writes. Every statement of a script
/// runs in one transaction; a CONCURRENTLY statement must be alone.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    shoal ddl 'ALTER TABLE orders ADD PRIMARY KEY (customer_id, id)'\n  \
    shoal ddl 'CREATE INDEX CONCURRENTLY orders_by_note ON orders (note)'\n  \
    shoal ddl --file migration.sql")]
pub struct DdlArgs {
    /// The statements (or give --file; `-` reads standard input)
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub sql: Option<String>,
    /// Read the statements from this file (`-` for standard input)
    #[arg(long, short)]
    pub file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream table from a query over distributed and reference tables, populated now
    Create {
        /// Name of the new table (as in SQL: name or schema.name)
        name: String,
        /// The defining query
        #[arg(long)]
        query: String,
        /// How often `shoal serve` refreshes it: 500ms, 1s, 2m
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        schedule: std::time::Duration,
        /// auto: differential when the query allows it, else full (saying why)
        #[arg(long, value_enum, default_value_t = StreamMode::Auto)]
        mode: StreamMode,
    },
    /// Change a stream table's schedule or mode
    Alter {
        name: String,
        #[arg(long, value_parser = parse_duration)]
        schedule: Option<std::time::Duration>,
        #[arg(long, value_enum)]
        mode: Option<StreamMode>,
    },
    /// Drop a stream table
    Drop { name: String },
    /// Capture the latest changes and refresh now
    Refresh {
        name: String,
        /// Recompute the whole query instead of applying changes
        #[arg(long)]
        full: bool,
    },
    /// List stream tables
    List(JsonFlag),
    /// Capture and refresh status per stream table and node
    Status(JsonFlag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamMode {
    Auto,
    Differential,
    Full,
}

/// `500ms`, `1s`, `2m`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?}; use 500ms, 1s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}; use ms, s, m or h"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("the duration {text:?} must be positive"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// Applications connect to the endpoint (`--listen`) with any PostgreSQL driver, as to the
/// coordinator: same database, users and passwords. Statements that one shard group answers run
/// on its node at the client's isolation level; transactions that write on several servers
/// commit with two-phase commit (and are resolved after a crash); everything else runs on the
/// coordinator.
///
/// Deadlocks across nodes (two transactions locking rows on two nodes in opposite orders,
/// which no node sees) are broken within one to two seconds, for sessions through the endpoint
/// and through the coordinator alike: the statement of the session that connected last fails
/// (with 40P01 through the endpoint; through the coordinator with 57014, the only error
/// PostgreSQL lets another session cause).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    shoal serve\n  \
    psql 'postgresql://app@127.0.0.1:6432/shop'\n  \
    shoal serve --listen 0.0.0.0:6432 --http off\n  \
    curl -s http://127.0.0.1:9187/metrics | grep shoal_endpoint")]
pub struct ServeArgs {
    /// Seconds between two cleanup passes
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cleanup_interval: u64,
    /// Consecutive failed polls of a node's capture slot before it is flagged (status, metric,
    /// warning)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub worker_retry_ticks: i32,
    /// Seconds between two checks of the distributed tables' planner statistics: shards that
    /// changed by more than 10% get new statistics on the coordinator, as `shoal analyze` gives
    /// them; 0 turns the checks off
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub statistics_interval: u64,
    /// Address of Shoal's PostgreSQL endpoint, which applications connect to like to the
    /// coordinator (same database, users and passwords); `off` disables it
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: String,
    /// Connections per node the endpoint uses at once for a read it splits across shards, each
    /// answering for a share of the node's shards without PostgreSQL's parallel workers (about
    /// the node's cores the read may use)
    #[arg(long, default_value_t = shoal_endpoint::Options::default().scatter_connections as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub scatter_connections: u16,
    /// Address of the HTTP endpoint (/metrics for Prometheus, /status as JSON); `off` disables it
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub http: String,
    #[command(flatten)]
    pub executor: crate::rebalance::ExecutorArgs,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Also look on every node for shard tables and replication objects that no placement or
    /// cleanup record explains, and record them for removal
    #[arg(long)]
    pub scan: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LocalDir {
    /// Directory holding the local cluster (data directories, logs, cluster.toml, shoal.env)
    #[arg(long, env = "SHOAL_LOCAL_DIR", value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Create and start a coordinator and N workers (or start what is stopped in an existing DIR)
    Up {
        #[command(flatten)]
        dir: LocalDir,
        /// Number of workers
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
        /// Coordinator port; worker i listens on PORT+i
        #[arg(long, default_value_t = 9700)]
        port: u16,
        /// Database created on every server
        #[arg(long, default_value = "shoal")]
        dbname: String,
    },
    /// Stop every server of the local cluster
    Down {
        #[command(flatten)]
        dir: LocalDir,
    },
    /// Show each server of the local cluster
    Status {
        #[command(flatten)]
        dir: LocalDir,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Start one more worker and register it as a node
    AddWorker {
        #[command(flatten)]
        dir: LocalDir,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Register a worker: checks the connection, version (15+) and wal_level = logical
    Add {
        /// HOST:PORT of the worker
        address: String,
        /// Database on the worker (default: the coordinator's database name)
        #[arg(long)]
        dbname: Option<String>,
        /// Register the node without placing shards on it
        #[arg(long)]
        no_shards: bool,
    },
    /// List registered nodes
    List(JsonFlag),
    /// Unregister a node that holds no shards (reference table copies are removed)
    Remove {
        /// Node id or HOST:PORT
        node: String,
    },
    /// Mark a node inactive: it gets no new shards
    Disable {
        /// Node id or HOST:PORT
        node: String,
    },
    /// Mark a node active again
    Activate {
        /// Node id or HOST:PORT
        node: String,
    },
    /// Mark a node as one that should have no shards and move every shard group off it, with
    /// progress (a background job; runs from here when no `shoal serve` runs)
    Drain(crate::rebalance::DrainArgs),
    /// Change a node's settings
    Set {
        /// Node id or HOST:PORT
        node: String,
        /// Whether new shards may be placed on the node
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        should_have_shards: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Hash-distribute a coordinator table (its rows move into shards on the workers)
    Distribute {
        /// Table name as in SQL, e.g. orders or shop."Order Items"
        table: String,
        /// Distribution column, as in SQL (quote a name with capitals: '"Id"')
        #[arg(long)]
        column: String,
        /// Number of shards, 1..=4096 (default 32, or the colocated table's count)
        #[arg(long)]
        shards: Option<i64>,
        /// Put shard i on the same node as shard i of this table, or `none` for a new group
        #[arg(long, value_name = "TABLE|none")]
        colocate_with: Option<String>,
        /// Also distribute the plain tables whose foreign keys reference this one through
        /// the distribution column, colocated, each by its referencing column; their keys stay
        /// enforced on the shards
        #[arg(long)]
        with_referencing: bool,
    },
    /// Bring every row back into a plain coordinator table and remove the shards
    Undistribute { table: String },
    /// Make a table a reference table: copied to every node and kept in sync
    Reference { table: String },
    /// List distributed and reference tables
    List(JsonFlag),
    /// Compare every shard and replica (and the coordinator's table) with the catalog's record
    /// of the table; exits 1 when something differs or a node cannot be read
    Check {
        /// Only this table (default: every distributed and reference table)
        table: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// List shards with their node and size (sizes are measured now)
    List {
        /// Only the shards of this table
        #[arg(long)]
        table: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Move a shard and every shard colocated with it to another node, online
    Move {
        /// Shard id (see `shoal shard list`)
        shard: i64,
        #[command(flatten)]
        transfer: TransferArgs,
        /// auto: logical replication when every table has a replica identity, else block_writes;
        /// force_logical: writes continue until a short cutover; block_writes: writes wait for
        /// the whole copy (reads go on)
        #[arg(long, value_enum, default_value_t = TransferMode::Auto)]
        mode: TransferMode,
    },
    /// Copy a reference table's shard to a node that lacks it
    Copy {
        /// Shard id of the reference table (see `shoal shard list`)
        shard: i64,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Cancel a running move or copy; the source stays authoritative and nothing is left behind
    Cancel {
        /// Operation id (printed by `shard move`, shown by shoal.rebalance_progress)
        operation: i64,
    },
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Target node: node id or HOST:PORT
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Start the transfer in the background, print its operation id and return
    #[arg(long)]
    pub no_wait: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TransferMode {
    Auto,
    ForceLogical,
    BlockWrites,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Place every table of the schema, together, on the node with the fewest shards
    Distribute {
        schema: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Add tables created in a distributed schema since it was distributed
    Sync {
        schema: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Move every table of a distributed schema to another node, online
    Move {
        schema: String,
        #[command(flatten)]
        transfer: TransferArgs,
        /// See `shoal shard move --help`
        #[arg(long, value_enum, default_value_t = TransferMode::Auto)]
        mode: TransferMode,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory of the demo cluster (recreated on every run)
    #[arg(long, default_value = "/tmp/shoal-demo")]
    pub dir: PathBuf,
    /// Coordinator port; workers listen on the next ports
    #[arg(long, default_value_t = 9800)]
    pub port: u16,
    /// Stop the servers at the end instead of leaving them running for you to explore
    #[arg(long)]
    pub stop: bool,
}
