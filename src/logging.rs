//! Log output with tracing: human-readable lines by default, JSON objects on request.
//!
//! Secrets are kept out of logs by type: every secret is a [`crate::secret::SecretString`],
//! which formats as `***`, and database URLs are logged through [`crate::secret::mask_url`].
//!
//! Colour codes are written only when stderr is a terminal and `NO_COLOR` is not set: a log
//! redirected to a file, a pipe, journald or a container runtime stays plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The variable that turns colours off even on a terminal (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";

/// Whether text logs carry ANSI colour codes: only on a terminal, and not when `NO_COLOR` is
/// set to anything non-empty.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the global subscriber writing to stderr. `level` is a tracing filter directive;
/// an invalid one falls back to `info` (configuration validation reports it separately).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let no_color = std::env::var(NO_COLOR).ok();
    let ansi = use_colour(std::io::stderr().is_terminal(), no_color.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests, or a command re-initialising after reading its config)
    // keeps the first subscriber instead of panicking.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        for (terminal, no_color, expected) in [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ] {
            assert_eq!(
                use_colour(terminal, no_color),
                expected,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }
}
