//! The `tsweep` command line: argument definitions (clap derive) and one function per
//! subcommand. Every command returns `Result<(), CliError>`; `main` prints the error as
//! one line `error: <reason>` and exits with [`CliError::exit_code`].
//!
//! Exit codes: 0 ok · 1 other failure · 2 bad input (sweep file, arguments, unknown
//! sweep, refused token) · 3 unavailable (coordinator, Redis, a process `local` starts)
//! · 4 the sweep ended with failed cells (`watch`, `local`).

pub mod bulk;
pub mod client;
pub mod error;
pub mod local;
pub mod output;
pub mod watch;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tsweep_proto::v1::{GetCurveRequest, GetSweepRequest, ListSweepsRequest, SubmitSweepRequest};

use crate::config::{ConfigOverrides, ServiceConfig};
use crate::logging::{self, LogFormat};
use crate::sweepfile::{self, SweepPlan};

pub use error::CliError;

/// Default coordinator address when neither `--coordinator` nor the service config says.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

#[derive(Debug, Parser)]
#[command(
    name = "tsweep",
    version = tsweep_proto::VERSION_WITH_PROTOCOL,
    about = "Transfer-learning sweeps (Kornblith et al. 2019) on a cluster: submit, watch, resume, report",
    long_about = None,
)]
pub struct Cli {
    /// Coordinator gRPC address. Default: http://<listen> of the service config
    /// (--config / TSWEEP__LISTEN), i.e. http://127.0.0.1:50051 (https:// when the config
    /// sets tls_cert and tls_key).
    #[arg(long, global = true, value_name = "URL")]
    pub coordinator: Option<String>,
    /// The user credential (bearer token). Default: user_token / user_token_file of the
    /// service config, else auth_token / auth_token_file (TSWEEP__USER_TOKEN,
    /// TSWEEP__AUTH_TOKEN). `serve` takes it as auth_token, for both roles.
    #[arg(long, global = true, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA bundle the coordinator's certificate must chain to (https:// only).
    /// Default: coordinator_ca_file of the service config (TSWEEP__COORDINATOR_CA_FILE),
    /// else the platform trust store.
    #[arg(long, global = true, value_name = "PEM")]
    pub coordinator_ca_file: Option<PathBuf>,
    /// Service config file (TOML): read by `serve`, and by the client commands for the
    /// coordinator address and token. Layers: defaults → file → TSWEEP__* env → flags.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines on stderr as text or JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (gRPC server, lease protocol on Redis).
    Serve(ServeArgs),
    /// Submit a sweep file (idempotent: only new cells are added; running it again finishes
    /// an interrupted submission).
    Submit(SubmitArgs),
    /// Show one sweep's counts and best scores, or every sweep.
    Status(StatusArgs),
    /// Follow a sweep live until it ends.
    Watch(SweepArg),
    /// Print every cell of a sweep with its state and scores.
    Results(ResultsArgs),
    /// Print one task's training curve (step, loss, lr, img/s, validation score per
    /// metrics entry, oldest first) as CSV or JSON.
    Curve(CurveArgs),
    /// Cancel every pending and running cell of a sweep.
    Cancel(SweepArg),
    /// Put failed and/or cancelled cells back to pending with a fresh retry budget.
    Retry(RetryArgs),
    /// Delete a sweep's state from Redis (cells, results, queues, metrics); files are kept.
    ///
    /// Removes Redis state only: checkpoints and feature caches on the workers' disks and
    /// reports written by `tsweep report --out DIR` are not touched (the checkpoint
    /// directory is printed when the tasks recorded one). A sweep with pending, leased or
    /// running cells must be cancelled first (`tsweep cancel SWEEP`), or deleted with
    /// `--force`, which cancels and then deletes. Export results first with `tsweep report`
    /// or `tsweep results`: they cannot be read back afterwards.
    Delete(DeleteArgs),
    /// Write the analysis (tables, Pearson r, plots, index.html, CSV/JSON) of a sweep.
    Report(ReportArgs),
    /// Run a sweep on this machine: private Redis, in-process coordinator, N workers.
    Local(LocalArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ResultsFormat {
    #[default]
    Table,
    Csv,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Executor {
    /// The libtorch trainer.
    #[default]
    Trainer,
    /// The test executor (sleeps, reports a score; for tests and benchmarks).
    Fake,
}

impl Executor {
    pub fn name(self) -> &'static str {
        match self {
            Executor::Trainer => "trainer",
            Executor::Fake => "fake",
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address host:port (port 0 picks a free one).
    #[arg(long)]
    pub listen: Option<String>,
    /// Prometheus /metrics listen address ("" disables it).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    #[arg(long, value_name = "MS")]
    pub lease_ttl_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub reaper_interval_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub finals_interval_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    pub acquire_retry_after_ms: Option<u64>,
    /// File holding one bearer token for both roles (exclusive with --token).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// File holding the user credential (SweepService), re-read while serving.
    #[arg(long, value_name = "FILE")]
    pub user_token_file: Option<PathBuf>,
    /// File holding the worker credential (WorkerService), re-read while serving.
    #[arg(long, value_name = "FILE")]
    pub worker_token_file: Option<PathBuf>,
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Allow a non-loopback listen address without a token.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The sweep file (TOML).
    pub file: PathBuf,
    /// Parse and expand, print the cell counts per regime and stage; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept grids over 1,000,000 cells.
    #[arg(long)]
    pub allow_huge: bool,
    /// Apply settings that changed in the file (steps, max_attempts, paths, ...) to the
    /// existing cells that have not succeeded. Without it they are listed and kept.
    #[arg(long)]
    pub update: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A sweep name; without it every sweep is listed.
    pub sweep: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct SweepArg {
    pub sweep: String,
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    pub sweep: String,
    #[arg(long, value_enum, default_value_t = ResultsFormat::Table)]
    pub format: ResultsFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CurveFormat {
    #[default]
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct CurveArgs {
    pub sweep: String,
    /// The task id (`tsweep results SWEEP --format csv` lists them).
    pub task_id: String,
    #[arg(long, value_enum, default_value_t = CurveFormat::Csv)]
    pub format: CurveFormat,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    pub sweep: String,
    /// Retry failed cells (with neither flag: failed and cancelled).
    #[arg(long)]
    pub failed: bool,
    /// Retry cancelled cells.
    #[arg(long)]
    pub cancelled: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub sweep: String,
    /// Cancel the sweep first (pending cells cancelled, running ones told to stop), then
    /// delete it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    pub sweep: String,
    /// Output directory (default ./tsweep-out/<sweep>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The sweep file (TOML).
    pub file: PathBuf,
    /// Worker processes to start (one slot each).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    #[arg(long, value_enum, default_value_t = Executor::Trainer)]
    pub executor: Executor,
    /// Report directory (default ./tsweep-out/<sweep>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Passed to each worker (`auto`, `cpu`, `cuda:N`).
    #[arg(long)]
    pub device: Option<String>,
    /// Where workers write checkpoints (default <out>/checkpoints).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_root: Option<PathBuf>,
    /// Prepared-data cache of the workers (default: the worker's own default).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The worker binary (default: tsweep-worker next to this executable, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,
    /// Accept grids over 1,000,000 cells.
    #[arg(long)]
    pub allow_huge: bool,
}

/// Runs the parsed command line to the end.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let base_level = match cli.command {
        Command::Serve(_) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    logging::init(cli.log_format, base_level, cli.verbose);

    // `submit --dry-run` needs neither the network nor a runtime.
    if let Command::Submit(args) = &cli.command {
        if args.dry_run {
            return submit_dry_run(args);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(cli))
}

async fn run_async(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Serve(args) => serve(&cli, args).await,
        Command::Submit(args) => submit(&cli, args).await,
        Command::Status(args) => status(&cli, args).await,
        Command::Watch(args) => watch(&cli, &args.sweep).await,
        Command::Results(args) => results(&cli, args).await,
        Command::Curve(args) => curve(&cli, args).await,
        Command::Cancel(args) => cancel(&cli, &args.sweep).await,
        Command::Retry(args) => retry(&cli, args).await,
        Command::Delete(args) => delete(&cli, args).await,
        Command::Report(args) => report(&cli, args).await,
        Command::Local(args) => local::run(&cli, args).await,
    }
}

/// A sweep file read from disk, with what `parse_and_expand` and `SubmitSweep` need.
pub struct SweepSource {
    pub text: String,
    pub file_name: String,
    pub base_dir: PathBuf,
}

impl SweepSource {
    /// Reads at most [`tsweep_proto::limits::MAX_SWEEP_FILE_BYTES`] (a larger file, or a
    /// device that never ends, is refused without reading further).
    pub fn read(path: &Path) -> Result<SweepSource, CliError> {
        use std::io::Read;
        let limit = tsweep_proto::limits::MAX_SWEEP_FILE_BYTES;
        let read_error = |source| CliError::ReadFile { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
        if bytes.len() > limit {
            return Err(CliError::FileTooLarge { path: path.to_path_buf(), limit });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
        })?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Ok(SweepSource { text, file_name: path.display().to_string(), base_dir })
    }

    /// Parses and validates the file without building its cells (any grid size fits).
    pub fn plan(&self, allow_huge: bool) -> Result<SweepPlan, CliError> {
        Ok(sweepfile::parse_plan(&self.text, &self.file_name, &self.base_dir, allow_huge)?)
    }

    pub fn request(&self, allow_huge: bool) -> SubmitSweepRequest {
        SubmitSweepRequest {
            file_text: self.text.clone(),
            file_name: self.file_name.clone(),
            base_dir: self.base_dir.display().to_string(),
            allow_huge,
            ..SubmitSweepRequest::default()
        }
    }

    /// Submits the file in bounded calls ([`bulk::submit`]), waiting out a coordinator that
    /// is still connecting to Redis.
    pub async fn submit(
        &self,
        client: &client::SweepClient,
        allow_huge: bool,
        update: bool,
    ) -> Result<tsweep_proto::v1::SubmitSweepResponse, CliError> {
        bulk::submit(client, self, allow_huge, update).await
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Other(format!("cannot encode json: {e}")))?;
    println!("{text}");
    Ok(())
}

fn submit_dry_run(args: &SubmitArgs) -> Result<(), CliError> {
    let source = SweepSource::read(&args.file)?;
    let sweep = source.plan(args.allow_huge)?;
    match args.format {
        Format::Table => print!("{}", output::dry_run_table(&sweep, &source.file_name)),
        Format::Json => print_json(&output::dry_run_json(&sweep))?,
    }
    Ok(())
}

/// The service config as the client sees it (for the default address, token and CA),
/// unless the flags already say everything.
fn client_config(cli: &Cli) -> Result<Option<ServiceConfig>, CliError> {
    let complete = match &cli.coordinator {
        Some(url) => cli.token.is_some() && (cli.coordinator_ca_file.is_some() || !tsweep_proto::tls::is_https(url)),
        None => false,
    };
    if complete {
        return Ok(None);
    }
    ServiceConfig::load(cli.config.as_deref(), ConfigOverrides::default())
        .map(Some)
        .map_err(|e| CliError::BadInput(e.to_string()))
}

/// `http://<listen>` (`https://` when `tls`) with an unspecified listen address (0.0.0.0,
/// ::) replaced by loopback.
pub fn coordinator_url_for_listen(listen: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    match listen.parse::<std::net::SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                });
            }
            format!("{scheme}://{addr}")
        }
        Err(_) => DEFAULT_COORDINATOR.to_string(),
    }
}

async fn connect(cli: &Cli) -> Result<client::SweepClient, CliError> {
    let config = client_config(cli)?;
    let url = cli
        .coordinator
        .clone()
        .or_else(|| config.as_ref().map(|c| coordinator_url_for_listen(&c.listen, c.tls_enabled())))
        .unwrap_or_else(|| DEFAULT_COORDINATOR.to_string());
    let token = cli.token.clone().or_else(|| config.as_ref().and_then(ServiceConfig::user_token));
    let ca_file =
        cli.coordinator_ca_file.clone().or_else(|| config.as_ref().and_then(|c| c.coordinator_ca_file.clone()));
    client::connect(&url, token, ca_file.as_deref()).await
}

async fn serve(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let overrides = ConfigOverrides {
        listen: args.listen.clone(),
        metrics_listen: args.metrics_listen.clone(),
        redis_url: args.redis_url.clone(),
        lease_ttl_ms: args.lease_ttl_ms,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        reaper_interval_ms: args.reaper_interval_ms,
        finals_interval_ms: args.finals_interval_ms,
        acquire_retry_after_ms: args.acquire_retry_after_ms,
        auth_token: cli.token.clone(),
        auth_token_file: args.auth_token_file.clone(),
        user_token_file: args.user_token_file.clone(),
        worker_token_file: args.worker_token_file.clone(),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        insecure: args.insecure.then_some(true),
        coordinator_ca_file: cli.coordinator_ca_file.clone(),
    };
    let config =
        ServiceConfig::load(cli.config.as_deref(), overrides).map_err(|e| CliError::BadInput(e.to_string()))?;
    let shutdown = async {
        wait_for_shutdown_signal().await;
        tracing::info!("shutdown signal received; stopping");
    };
    crate::server::serve(config, shutdown).await.map_err(serve_error)
}

/// A coordinator that cannot start: bad settings are bad input, a port in use or a TLS
/// file that cannot be read make it unavailable.
pub fn serve_error(error: crate::server::ServeError) -> CliError {
    use crate::server::ServeError;
    let message = format!("coordinator: {error}");
    match error {
        ServeError::Config(_) | ServeError::TlsFile { .. } | ServeError::Tls(_) => CliError::BadInput(message),
        ServeError::Bind { .. } | ServeError::Metrics(_) => CliError::Unavailable(message),
        ServeError::Transport(_) | ServeError::Task(_) => CliError::Other(message),
    }
}

/// Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal was closed).
pub async fn wait_for_shutdown_signal() {
    let signal = tsweep_proto::signals::shutdown_signal().await;
    tracing::info!(signal, "stopping");
}

async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<(), CliError> {
    let source = SweepSource::read(&args.file)?;
    // Refuse bad input here, before the network: same parser as the coordinator's.
    source.plan(args.allow_huge)?;
    let client = connect(cli).await?;
    let response = source.submit(&client, args.allow_huge, args.update).await?;
    match args.format {
        Format::Table => print!("{}", output::submit_table(&response)),
        Format::Json => print_json(&output::submit_json(&response))?,
    }
    Ok(())
}

async fn status(cli: &Cli, args: &StatusArgs) -> Result<(), CliError> {
    let mut client = connect(cli).await?;
    match &args.sweep {
        Some(sweep) => {
            let summary = client
                .get_sweep(GetSweepRequest { sweep: sweep.clone() })
                .await
                .map_err(|s| CliError::from_status(&format!("sweep {sweep}"), s))?
                .into_inner();
            match args.format {
                Format::Table => print!("{}", output::summary_text(&summary)),
                Format::Json => print_json(&output::summary_json(&summary))?,
            }
        }
        None => {
            let sweeps = client
                .list_sweeps(ListSweepsRequest {})
                .await
                .map_err(|s| CliError::from_status("list sweeps", s))?
                .into_inner()
                .sweeps;
            match args.format {
                Format::Table => print!("{}", output::sweeps_table(&sweeps)),
                Format::Json => {
                    print_json(&serde_json::Value::Array(sweeps.iter().map(output::summary_json).collect()))?
                }
            }
        }
    }
    Ok(())
}

/// How long an ended sweep must stay ended before `watch` believes it (final refits are
/// scheduled a moment after a grid stage ends).
pub const WATCH_SETTLE: Duration = Duration::from_secs(3);

async fn watch(cli: &Cli, sweep: &str) -> Result<(), CliError> {
    let mut client = connect(cli).await?;
    let summary = watch::watch_until_done(&mut client, sweep, WATCH_SETTLE, false).await?;
    print!("{}", output::summary_text(&summary));
    failed_cells_error(&summary)
}

/// `Err(CellsFailed)` when an ended sweep has failed cells.
pub fn failed_cells_error(summary: &tsweep_proto::v1::SweepSummary) -> Result<(), CliError> {
    let counts = summary.counts.unwrap_or_default();
    if counts.failed > 0 {
        return Err(CliError::CellsFailed {
            sweep: summary.sweep.clone(),
            failed: counts.failed,
            cancelled: counts.cancelled,
        });
    }
    Ok(())
}

async fn results(cli: &Cli, args: &ResultsArgs) -> Result<(), CliError> {
    let mut client = connect(cli).await?;
    let mut tasks = client::all_tasks(&mut client, &args.sweep).await?;
    output::sort_tasks(&mut tasks);
    match args.format {
        ResultsFormat::Table => print!("{}", output::results_table(&tasks)),
        ResultsFormat::Csv => {
            // The report's column set: `tsweep results --format csv` is `results.csv`.
            let report_error = |e: tsweep_report::ReportError| CliError::Other(format!("results: {e}"));
            let input = tsweep_report::ReportInput::from_task_infos(&tasks).map_err(report_error)?;
            print!("{}", tsweep_report::export::results_csv(&input.cells).map_err(report_error)?);
        }
        ResultsFormat::Json => print_json(&output::results_json(&tasks))?,
    }
    Ok(())
}

async fn curve(cli: &Cli, args: &CurveArgs) -> Result<(), CliError> {
    let mut client = connect(cli).await?;
    let curve = client
        .get_curve(GetCurveRequest { sweep: args.sweep.clone(), task_id: args.task_id.clone() })
        .await
        .map_err(|s| CliError::from_status(&format!("sweep {} task {}", args.sweep, args.task_id), s))?
        .into_inner();
    match args.format {
        CurveFormat::Csv => {
            print!("{}", output::curve_csv(&curve.points).map_err(|e| CliError::Other(format!("curve: {e}")))?)
        }
        CurveFormat::Json => {
            print_json(&output::curve_json(&args.sweep, &args.task_id, &curve.points, curve.kept_at_most))?
        }
    }
    Ok(())
}

async fn cancel(cli: &Cli, sweep: &str) -> Result<(), CliError> {
    let client = connect(cli).await?;
    let response = bulk::cancel(&client, sweep).await?;
    println!("sweep {sweep}: {} cell(s) cancelled", response.moved);
    Ok(())
}

async fn retry(cli: &Cli, args: &RetryArgs) -> Result<(), CliError> {
    let (failed, cancelled) =
        if !args.failed && !args.cancelled { (true, true) } else { (args.failed, args.cancelled) };
    let client = connect(cli).await?;
    let response = bulk::retry(&client, &args.sweep, failed, cancelled).await?;
    println!("sweep {}: {} cell(s) back to pending", args.sweep, response.moved);
    Ok(())
}

async fn delete(cli: &Cli, args: &DeleteArgs) -> Result<(), CliError> {
    let client = connect(cli).await?;
    let response = bulk::delete(&client, &args.sweep, args.force).await?;
    if response.leftovers_only {
        println!("sweep {}: already deleted; {} leftover key(s) removed", args.sweep, response.keys_deleted);
        return Ok(());
    }
    if response.cancelled > 0 {
        println!("sweep {}: {} pending cell(s) cancelled", args.sweep, response.cancelled);
    }
    println!(
        "sweep {}: deleted from Redis ({} cell(s), {} key(s))",
        args.sweep, response.tasks_deleted, response.keys_deleted
    );
    if response.checkpoint_dir.is_empty() {
        println!("files on disk (checkpoints, feature caches, reports) are not removed");
    } else {
        println!("files on disk are not removed: checkpoints under {}", response.checkpoint_dir);
    }
    Ok(())
}

/// `./tsweep-out/<sweep>` unless given.
pub fn default_out_dir(sweep: &str, out: Option<&Path>) -> PathBuf {
    out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("tsweep-out").join(sweep))
}

async fn report(cli: &Cli, args: &ReportArgs) -> Result<(), CliError> {
    let mut client = connect(cli).await?;
    let tasks = client::all_tasks(&mut client, &args.sweep).await?;
    if tasks.is_empty() {
        return Err(CliError::BadInput(format!("sweep {} has no cells", args.sweep)));
    }
    let out = default_out_dir(&args.sweep, args.out.as_deref());
    let written = write_report(&mut client, &tasks, &out, std::time::Duration::ZERO).await?;
    print!("{}", written.terminal_tables);
    println!("report: {}", written.index_html.display());
    Ok(())
}

/// What [`write_report`] produced.
pub struct WrittenReport {
    pub index_html: PathBuf,
    pub terminal_tables: String,
}

/// Builds the analysis from the cells, fetches the training curves of the selected runs,
/// and writes it all under `out` (tsweep-report). `curve_settle`: how long to wait for a
/// selected run whose curve is still empty (the coordinator merges metrics entries a
/// moment after a task ends; `tsweep local` writes its report right then).
pub async fn write_report(
    client: &mut client::SweepClient,
    tasks: &[tsweep_proto::v1::TaskInfo],
    out: &Path,
    curve_settle: std::time::Duration,
) -> Result<WrittenReport, CliError> {
    let mut input =
        tsweep_report::ReportInput::from_task_infos(tasks).map_err(|e| CliError::Other(format!("report: {e}")))?;
    let selected: Vec<String> = input.selected_runs().map(|c| c.task_id.clone()).collect();
    let deadline = std::time::Instant::now() + curve_settle;
    loop {
        input.curves = client::curves(client, &input.sweep, selected.iter().map(String::as_str)).await?;
        let all_in = selected.iter().all(|id| input.curves.get(id).is_some_and(|points| !points.is_empty()));
        if all_in || std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let terminal_tables = tsweep_report::render_terminal_tables(&input);
    let paths = tsweep_report::write_report(&input, out).map_err(|e| CliError::Other(format!("report: {e}")))?;
    Ok(WrittenReport { index_html: paths.index_html, terminal_tables })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        assert_eq!(coordinator_url_for_listen("0.0.0.0:7000", false), "http://127.0.0.1:7000");
        assert_eq!(coordinator_url_for_listen("127.0.0.1:50051", false), DEFAULT_COORDINATOR);
        assert_eq!(coordinator_url_for_listen("[::]:1", false), "http://[::1]:1");
        assert_eq!(coordinator_url_for_listen("127.0.0.1:7000", true), "https://127.0.0.1:7000");
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["tsweep", "-vv", "local", "x.toml", "--workers", "3", "--executor", "fake"]).unwrap();
        assert_eq!(cli.verbose, 2);
        assert!(matches!(cli.command, Command::Local(LocalArgs { workers: 3, executor: Executor::Fake, .. })));
    }
}
