//! Logging for every tsweep binary: `tracing` to stderr as text or JSON lines
//! (`--log-format json`), filtered by `RUST_LOG` when set, else by the directives the
//! binary passes (the coordinator derives them from `-v`; the worker logs at `info`). The
//! worker's children inherit its stderr and format, so one stream carries both.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The flag's value (`--log-format text|json`).
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global subscriber with `RUST_LOG`, or `default_directives` when it is
/// unset (`EnvFilter` syntax: `warn,tsweep=info`). Text has colours only on a terminal (log
/// files and pipes get plain text). A second call (tests) leaves the first in place.
pub fn init(format: LogFormat, default_directives: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directives));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
