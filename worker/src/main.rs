//! `tsweep-worker`: the agent (default), the per-task child (`run-task`), and the data tools
//! (`make-dataset`, `data prepare|verify`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tsweep_worker::child_protocol::ExecutorKind;
use tsweep_worker::config::{AgentArgs, WorkerConfig};
use tsweep_worker::data_cli::{self, MakeDatasetArgs, PrepareArgs};
use tsweep_worker::logging::{self, LogFormat};

/// The tsweep worker. Without a subcommand it runs the agent (same as `tsweep-worker agent`).
#[derive(Parser)]
#[command(name = "tsweep-worker", disable_version_flag = true, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Print the version and the protocol version.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: register, run tasks in child processes, heartbeat, forward metrics.
    Agent(AgentArgs),
    /// Run one task (the agent's child process): TaskInput JSON on stdin, events on stdout.
    RunTask {
        #[arg(long, value_enum)]
        executor: ExecutorKind,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Write small synthetic datasets in the real on-disk formats (tests, examples/synthetic.toml).
    MakeDataset(MakeDatasetArgs),
    /// Prepared-shard datasets: build them once from a download, check them.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Decode and resize a downloaded dataset once into prepared shards.
    Prepare(PrepareArgs),
    /// Check a prepared directory's manifest and shard hashes.
    Verify {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsweep-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.version {
        println!("{}", tsweep_proto::version_line("tsweep-worker"));
        return Ok(());
    }
    match cli.command {
        Some(Command::RunTask { executor, log_format }) => {
            logging::init(log_format, "info");
            std::process::exit(tsweep_worker::run_task::run_child(executor));
        }
        Some(Command::Agent(args)) => run_agent(&args),
        Some(Command::MakeDataset(args)) => {
            for line in data_cli::make_dataset(&args)? {
                println!("{line}");
            }
            Ok(())
        }
        Some(Command::Data { command: DataCommand::Prepare(args) }) => {
            logging::init(LogFormat::Text, "info");
            println!("{}", data_cli::prepare(&args)?);
            Ok(())
        }
        Some(Command::Data { command: DataCommand::Verify { dir } }) => {
            let report = data_cli::verify(&dir)?;
            for note in &report.notes {
                println!("note: {note}");
            }
            for difference in &report.differences {
                println!("difference: {difference}");
            }
            if !report.ok() {
                anyhow::bail!("{}: {} differences from the manifest", dir.display(), report.differences.len());
            }
            println!(
                "{}: ok ({} shards, content hash {})",
                dir.display(),
                report.manifest.shards.len(),
                report.manifest.content_hash
            );
            Ok(())
        }
        None => run_agent(&cli.agent),
    }
}

fn run_agent(args: &AgentArgs) -> anyhow::Result<()> {
    let config = WorkerConfig::load(args)?;
    logging::init(config.log_format, "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(tsweep_worker::agent::cancel_on_signal(shutdown.clone()));
        tsweep_worker::agent::run(config, shutdown).await
    })?;
    Ok(())
}
