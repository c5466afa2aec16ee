//! Logging for the `tsweep` binary: `tracing` to stderr as text or JSON lines
//! (`--log-format json`), filtered by `RUST_LOG` when set, else by `-v` count.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. `base` is the level without `-v` (`info` for the
/// server, `warn` for CLI commands); each `-v` raises it one step. Safe to call twice
/// (the second call does nothing).
pub fn init(format: LogFormat, base: tracing::Level, verbose: u8) {
    let level = match (base, verbose) {
        (_, 0) => base,
        (tracing::Level::ERROR, 1) => tracing::Level::WARN,
        (tracing::Level::WARN, 1) | (tracing::Level::ERROR, 2) => tracing::Level::INFO,
        (tracing::Level::INFO, 1) | (tracing::Level::WARN, 2) | (tracing::Level::ERROR, 3) => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Our crates at the chosen level; dependencies one notch quieter unless tracing.
        let deps = if level == tracing::Level::TRACE { "debug" } else { "warn" };
        EnvFilter::new(format!("{deps},tsweep={level},tsweep_coordinator={level},tsweep_report={level}").to_lowercase())
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        // Colours only on a terminal: log files and pipes get plain text.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
