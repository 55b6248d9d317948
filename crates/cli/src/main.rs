//! `shoal`: the command-line interface. Parses arguments, finds the coordinator, runs one
//! command and turns any error into one line that says what to do next.

mod analyze;
mod args;
mod commands;
mod config;
mod demo;
mod explain;
mod http;
mod jobs;
mod output;
mod rebalance;
mod serve;
mod stream;
mod transfer;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes already quoted by their parent.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}

/// `shoal shard list | head` should end quietly, as other Unix tools do, not panic on a closed
/// pipe: Rust ignores SIGPIPE by default, so restore the default action.
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

fn init_logging(verbose: u8) {
    // tokio-postgres logs every statement and its parameters at debug level, and some carry
    // passwords (a user mapping's, a subscription's connection string): it stays at warn
    // unless SHOAL_LOG asks for it by name.
    let default = match verbose {
        0 => "warn",
        1 => "info,tokio_postgres=warn",
        _ => "debug,tokio_postgres=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
