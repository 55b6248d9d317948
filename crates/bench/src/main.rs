//! `shoal-bench`: measures Shoal against its anchors on real servers started by the test
//! harness (fsync off, as the anchor figures were measured). Not a test: it prints figures
//! next to the anchor they compare with, for BENCHMARKS.md.

mod ddl;
mod endpoint;
mod moves;
mod queries;
mod rebalance;
mod stall;
mod statistics;
mod stream_property;
mod streams;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    about = "Benchmarks of moves, rebalances, stream tables, DDL, queries and statistics (see BENCHMARKS.md)"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Online move of one shard group vs a raw binary COPY of the same rows, same two servers
    Move {
        /// Approximate size of the shard group in MB
        #[arg(long, default_value_t = 200)]
        mb: u64,
        /// Runs of each measurement; the median is reported
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Rebalance of the reference data set from 2 workers to 3: sequential vs both parallel flags
    Rebalance {
        /// Runs (each: sequential, then parallel, alternating); medians are reported
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Size of the data set: 1.0 is the reference data set (2,000,000 orders)
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Tasks running at once, in all
        #[arg(long, default_value_t = 4)]
        max_parallel: usize,
        /// Tasks running at once that involve one node
        #[arg(long, default_value_t = 4)]
        max_parallel_per_node: usize,
    },
    /// Stream tables: differential vs full refresh, idle refresh, capture throughput, freshness
    Stream {
        /// Rows in the source table
        #[arg(long, default_value_t = 1_000_000)]
        rows: i64,
    },
    /// The stream tables' property test (differential refresh vs the query recomputed, on
    /// random queries and changes) over many cases; failures shrunk to a minimal case
    StreamProperty {
        /// Cases to run
        #[arg(long, default_value_t = 2000)]
        cases: u64,
        /// Seed of the first case (case i is seed + i)
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// DDL on the reference data set's orders (32 shards) vs the same statement on one server
    Ddl {
        /// Rows of orders (2,000,000 in the reference data set)
        #[arg(long, default_value_t = 2_000_000)]
        orders: i64,
        /// Runs of each statement; medians are reported
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Query set Q1-Q10 on the reference data set through the coordinator and through Shoal's
    /// endpoint vs one plain server, then the three pgbench scripts on all three
    Queries {
        /// Rows of orders (2,000,000 in the reference data set; order items are twice that)
        #[arg(long, default_value_t = 2_000_000)]
        orders: i64,
        /// Runs of each query; medians are reported
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only the queries whose label starts with this, e.g. Q5
        #[arg(long)]
        only: Option<String>,
        /// Connections per node the endpoint uses for a read split across shards
        /// (`shoal serve --scatter-connections`)
        #[arg(long, default_value_t = shoal_endpoint::Options::default().scatter_connections as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        scatter_connections: u16,
    },
    /// pgbench through Shoal's endpoint, through the coordinator and on one plain server:
    /// key lookups, one-shard-group and two-order transactions, built-in TPC-B
    Endpoint {
        /// Rows of orders (2,000,000 in the reference data set)
        #[arg(long, default_value_t = 2_000_000)]
        orders: i64,
        /// Seconds of each pgbench run
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// pgbench clients
        #[arg(long, default_value_t = 4)]
        clients: u32,
    },
    /// Planner statistics of orders on the coordinator: ANALYZE there vs `shoal analyze`
    Statistics {
        /// Rows of orders (2,000,000 in the reference data set)
        #[arg(long, default_value_t = 2_000_000)]
        orders: i64,
        /// Runs of each measurement; medians are reported
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Latency of single-row inserts (pgbench --rate) into a shard group during its move
    Stall {
        /// Inserts per second
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Size of the moved group in MB
        #[arg(long, default_value_t = 19)]
        mb: u64,
        /// How many moves (back and forth) during one pgbench run
        #[arg(long, default_value_t = 4)]
        moves: usize,
        /// Send the inserts through Shoal's endpoint instead of the coordinator
        #[arg(long)]
        endpoint: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.command {
            Command::Move { mb, runs } => moves::run(mb, runs).await,
            Command::Ddl { orders, runs } => ddl::run(orders, runs).await,
            Command::Rebalance {
                runs,
                scale,
                max_parallel,
                max_parallel_per_node,
            } => {
                let limits = shoal_jobs::Limits {
                    max_parallel: max_parallel.max(1),
                    max_parallel_per_node: max_parallel_per_node.max(1),
                };
                rebalance::run(runs, scale, limits).await
            }
            Command::Stall {
                rate,
                mb,
                moves,
                endpoint,
            } => stall::run(rate, mb, moves, endpoint).await,
            Command::Queries {
                orders,
                runs,
                only,
                scatter_connections,
            } => queries::run(orders, runs, only, usize::from(scatter_connections)).await,
            Command::Endpoint {
                orders,
                seconds,
                clients,
            } => endpoint::run(orders, seconds, clients).await,
            Command::Stream { rows } => streams::run(rows).await,
            Command::StreamProperty { cases, seed } => stream_property::run(cases, seed).await,
            Command::Statistics { orders, runs } => statistics::run(orders, runs).await,
        }
    })
}

/// The median of some figures (the machine is shared and noisy).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The value at a percentile (0..=100) of sorted figures.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
