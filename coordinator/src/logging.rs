//! Logging for the `tsweep` binary: [`tsweep_proto::logging`] at a level set by the `-v`
//! count (`RUST_LOG` overrides it).

pub use tsweep_proto::logging::LogFormat;

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
    // Our crates at the chosen level; dependencies one notch quieter unless tracing.
    let deps = if level == tracing::Level::TRACE { "debug" } else { "warn" };
    let directives = format!("{deps},tsweep={level},tsweep_coordinator={level},tsweep_report={level}");
    tsweep_proto::logging::init(format, &directives.to_lowercase());
}
