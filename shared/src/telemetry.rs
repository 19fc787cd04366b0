//! Tracing set-up shared by both binaries.

use tracing_subscriber::EnvFilter;

use crate::settings::LogSettings;

/// Installs the global subscriber: JSON lines when `log.json`, human-readable otherwise.
/// `RUST_LOG` wins over `log.filter`; the default is `info`.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(log.filter.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal; a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A second init (tests start several services in one process) is harmless, so its error is ignored.
    if log.json {
        let _ = builder.json().with_current_span(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}
