//! `tsweep-fake-task run-task --executor fake [--log-format F]`: the per-task child of the
//! fake executor, the same code as `tsweep-worker run-task --executor fake` in a binary
//! that does not link libtorch. Loading libtorch takes about a second of CPU per child; a
//! cluster test or benchmark that runs thousands of fake cells would spend its time there.
//! The agent (`tsweep-worker --executor fake`) uses this binary for its children when it
//! finds it next to itself.

use clap::{Parser, Subcommand};
use tsweep_child::child_protocol::{exit_code, ExecutorKind};
use tsweep_child::logging::{self, LogFormat};

#[derive(Parser)]
#[command(name = "tsweep-fake-task")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one fake task: TaskInput JSON on stdin, events on stdout.
    RunTask {
        #[arg(long, value_enum)]
        executor: ExecutorKind,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
}

fn main() {
    let Command::RunTask { executor, log_format } = Cli::parse().command;
    logging::init(log_format, "info");
    if executor != ExecutorKind::Fake {
        eprintln!("tsweep-fake-task runs only the fake executor (got {executor:?}); use tsweep-worker run-task");
        std::process::exit(exit_code::FATAL);
    }
    std::process::exit(tsweep_child::run_task::run_child_with(executor, &mut tsweep_child::fake::run));
}
