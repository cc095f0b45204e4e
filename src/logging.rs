//! Log output with tracing: human-readable lines by default, JSON objects on request.
//!
//! Secrets are kept out of logs by type: every secret is a [`crate::secret::SecretString`],
//! which formats as `***`, and database URLs are logged through [`crate::secret::mask_url`].

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr. `level` is a tracing filter directive;
/// an invalid one falls back to `info` (configuration validation reports it separately).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests, or a command re-initialising after reading its config)
    // keeps the first subscriber instead of panicking.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
