//! Logging: `tracing` to stderr, level from `RUST_LOG` (default `info`; rumqttc's own
//! chatter at `warn`). `PVE2MQTT_LOG_FORMAT=json` writes one JSON object per line (for
//! log collectors: Loki, journald's JSON parsers, `docker logs` shippers); anything else,
//! or unset, the plain text format.

/// The variable that picks the log format; not a config key (logging starts before the
/// config is read, so a config error is logged in the chosen format too).
pub const LOG_FORMAT_VAR: &str = "PVE2MQTT_LOG_FORMAT";

pub fn init() {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn,rumqttd=off"))
    };
    let json = std::env::var(LOG_FORMAT_VAR).is_ok_and(|v| v.trim().eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        // Colour codes only for a terminal, not for journald or `docker logs`.
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}
