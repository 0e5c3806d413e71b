//! What can go wrong talking to Proxmox, split the way callers must branch
//! (reference `pve-api.md` §3): a bad token is fatal at startup, a missing privilege is
//! reported, an unreachable node or endpoint is retried later.
//!
//! No variant ever holds the API token: `reason` is Proxmox's own text and `message` is
//! built from the HTTP stack's error chain, which never contains request headers.
use std::fmt;

use serde_json::{Map, Value};

#[derive(thiserror::Error, Debug)]
pub enum PveError {
    /// 401: the token is wrong, unknown, expired or disabled (`Authentication failed!` since
    /// 9.1.5; older releases name the cause, e.g. `no such token 'x' for user 'y'`).
    #[error("HTTP 401: {reason} (check the API token)")]
    Unauthorized { reason: String },
    /// 403: `Permission check failed (/vms/100, VM.PowerMgmt)`.
    #[error("HTTP 403: {reason}")]
    Forbidden { reason: String },
    /// 595/596/597/599: the endpoint we talk to could not forward the request to the node in
    /// the path (node down or unreachable). The body is empty; the reason is the OS error.
    #[error(
        "HTTP {status}: {} (the Proxmox endpoint could not reach the target node)",
        or_proxy_error(reason)
    )]
    NodeUnreachable { status: u16, reason: String },
    /// Any other status >= 400, with the parameter errors of a 400 when Proxmox sent them.
    #[error("HTTP {status}: {reason}{}", ParamErrors(errors.as_ref()))]
    Api {
        status: u16,
        reason: String,
        errors: Option<Map<String, Value>>,
    },
    /// No usable answer: connection refused or reset, DNS, TLS (certificate) failure.
    #[error("cannot talk to Proxmox at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("Proxmox at {url} did not answer within the configured timeout")]
    Timeout { url: String },
    /// A 2xx answer whose body does not have the shape we expect.
    #[error("unexpected answer from Proxmox to {endpoint}: {message}")]
    Decode { endpoint: String, message: String },
    /// The connection settings cannot work (unreadable `ca_file`, malformed URL). Raised by
    /// [`crate::pve::PveClient::new`] only.
    #[error("invalid Proxmox connection settings: {message}")]
    Config { message: String },
}

impl PveError {
    /// Whether trying the same request again later may succeed without anyone changing
    /// anything: transport failures, timeouts, unreachable nodes and 5xx answers (Proxmox
    /// uses 500 for temporary trouble such as `cluster not ready - no quorum?`, as well as for
    /// state conflicts; callers never retry POSTs on their own, so reading 500 as transient
    /// only affects polling back-off). 501 (`Method … not implemented`) is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            PveError::Transport { .. }
            | PveError::Timeout { .. }
            | PveError::NodeUnreachable { .. } => true,
            PveError::Api { status, .. } => *status >= 500 && *status != 501,
            PveError::Unauthorized { .. }
            | PveError::Forbidden { .. }
            | PveError::Decode { .. }
            | PveError::Config { .. } => false,
        }
    }

    /// The HTTP status, when Proxmox answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            PveError::Unauthorized { .. } => Some(401),
            PveError::Forbidden { .. } => Some(403),
            PveError::NodeUnreachable { status, .. } | PveError::Api { status, .. } => {
                Some(*status)
            }
            PveError::Transport { .. }
            | PveError::Timeout { .. }
            | PveError::Decode { .. }
            | PveError::Config { .. } => None,
        }
    }

    /// Proxmox's own explanation, when it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            PveError::Unauthorized { reason }
            | PveError::Forbidden { reason }
            | PveError::NodeUnreachable { reason, .. }
            | PveError::Api { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether the object named in the request does not exist (any more): Proxmox has no
    /// 404 for these and answers 500 `Configuration file 'nodes/pve/qemu-server/999.conf'
    /// does not exist`, `unable to find configuration file for VM 999 on node 'pve'`, or
    /// 400 `{"upid":"no such task"}`.
    pub fn is_missing_object(&self) -> bool {
        match self {
            PveError::Api {
                status: 500,
                reason,
                ..
            } => {
                reason.contains("does not exist")
                    || reason.contains("unable to find configuration file")
            }
            PveError::Api {
                status: 400,
                errors: Some(errors),
                ..
            } => errors
                .values()
                .any(|v| v.as_str().is_some_and(|text| text.contains("no such task"))),
            _ => false,
        }
    }
}

fn or_proxy_error(reason: &str) -> &str {
    if reason.is_empty() {
        "proxy error"
    } else {
        reason
    }
}

/// Renders `errors` as ` (vmid: invalid format - …; node: …)`, one line.
struct ParamErrors<'a>(Option<&'a Map<String, Value>>);

impl fmt::Display for ParamErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(errors) = self.0.filter(|errors| !errors.is_empty()) else {
            return Ok(());
        };
        f.write_str(" (")?;
        for (index, (param, problem)) in errors.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            let text = match problem {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            write!(f, "{param}: {}", one_line(&text))?;
        }
        f.write_str(")")
    }
}

/// Joins the lines of a Proxmox message (which usually ends in `\n`) with spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the error for a status >= 400 from what Proxmox sent (pure, so it is tested
/// without a server).
///
/// `reason` is Proxmox's own text, taken in this order: the JSON `message` (PVE 8.3+), the
/// HTTP reason phrase when it is not the canonical one (pveproxy puts the first line of the
/// error there, and it is all an auth failure or a 595 carries), a plain-text body (errors
/// raised outside a handler since libpve-http-server-perl 5.2), the canonical phrase.
pub(crate) fn from_response(status: u16, reason_phrase: Option<&str>, body: &[u8]) -> PveError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        message: Option<Value>,
        #[serde(default)]
        errors: Option<Value>,
    }

    let (json_message, errors, is_json) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => {
            let message = match parsed.message {
                Some(Value::String(text)) => Some(one_line(&text)),
                _ => None,
            };
            let errors = match parsed.errors {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            };
            (message, errors, true)
        }
        Err(_) => (None, None, false),
    };
    let plain_body = if is_json {
        None
    } else {
        let text = one_line(&String::from_utf8_lossy(body));
        Some(truncate_chars(&text, 300))
    };
    let canonical = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .map(str::to_owned);
    let reason = [
        json_message,
        reason_phrase.map(one_line),
        plain_body,
        canonical,
    ]
    .into_iter()
    .flatten()
    .find(|text| !text.is_empty())
    .unwrap_or_default();

    match status {
        401 => PveError::Unauthorized { reason },
        403 => PveError::Forbidden { reason },
        595 | 596 | 597 | 599 => PveError::NodeUnreachable { status, reason },
        _ => PveError::Api {
            status,
            reason,
            errors,
        },
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Test helper: the parameter errors of Proxmox's "HTTP 400: Parameter verification
/// failed."; panics on any other error.
#[cfg(test)]
pub(crate) fn parameter_errors(err: &PveError) -> &Map<String, Value> {
    let PveError::Api {
        status: 400,
        reason,
        errors: Some(errors),
    } = err
    else {
        panic!("expected a 400 with parameter errors, got {err:?}");
    };
    assert_eq!(reason, "Parameter verification failed.");
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_401_with_an_empty_body_takes_the_reason_phrase() {
        let err = from_response(401, Some("Authentication failed!"), b"");
        assert!(
            matches!(&err, PveError::Unauthorized { reason } if reason == "Authentication failed!")
        );
        assert_eq!(
            err.to_string(),
            "HTTP 401: Authentication failed! (check the API token)"
        );
        assert_eq!(err.status(), Some(401));
        assert!(!err.is_transient());
    }

    #[test]
    fn a_401_without_any_text_falls_back_to_the_canonical_phrase() {
        let err = from_response(401, None, b"");
        assert_eq!(
            err.to_string(),
            "HTTP 401: Unauthorized (check the API token)"
        );
    }

    #[test]
    fn a_403_prefers_the_json_message_over_the_phrase() {
        let body =
            br#"{"data":null,"message":"Permission check failed (/vms/100, VM.PowerMgmt)\n"}"#;
        let err = from_response(403, Some("Permission check failed"), body);
        assert_eq!(
            err.to_string(),
            "HTTP 403: Permission check failed (/vms/100, VM.PowerMgmt)"
        );
    }

    #[test]
    fn an_old_style_403_body_uses_the_reason_phrase() {
        // The recorded body is {"data":null}; the text is only in the status line.
        let body = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pve/error_403_permission.body.json"
        ));
        let err = from_response(
            403,
            Some("Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)"),
            body,
        );
        assert!(matches!(&err, PveError::Forbidden { reason }
            if reason == "Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)"));
    }

    #[test]
    fn a_400_keeps_the_parameter_errors_and_shows_them_on_one_line() {
        let body = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pve/error_400_parameter_verification.body.json"
        ));
        let err = from_response(400, Some("Parameter verification failed."), body);
        let errors = parameter_errors(&err);
        assert_eq!(
            errors["vmid"].as_str(),
            Some("invalid format - value does not look like a valid VM ID\n")
        );
        assert_eq!(
            err.to_string(),
            "HTTP 400: Parameter verification failed. (vmid: invalid format - value does not look like a valid VM ID)"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn proxy_errors_with_an_empty_body_are_node_unreachable() {
        let err = from_response(595, Some("Connection refused"), b"");
        assert!(
            matches!(&err, PveError::NodeUnreachable { status: 595, reason } if reason == "Connection refused")
        );
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "HTTP 595: Connection refused (the Proxmox endpoint could not reach the target node)"
        );
        let bare = from_response(596, None, b"");
        assert_eq!(
            bare.to_string(),
            "HTTP 596: proxy error (the Proxmox endpoint could not reach the target node)"
        );
    }

    #[test]
    fn a_plain_text_body_is_used_when_the_phrase_is_canonical() {
        let err = from_response(501, None, b"no such uri\n");
        assert_eq!(err.to_string(), "HTTP 501: no such uri");
        assert!(!err.is_transient());
    }

    #[test]
    fn a_500_state_conflict_is_reported_with_proxmox_text() {
        let body = br#"{"data":null,"message":"CT 101 already running\n"}"#;
        let err = from_response(500, Some("CT 101 already running"), body);
        assert_eq!(err.to_string(), "HTTP 500: CT 101 already running");
        assert!(err.is_transient());
        assert!(!err.is_missing_object());
    }

    #[test]
    fn missing_guests_and_tasks_are_recognised() {
        let gone = from_response(
            500,
            Some("Configuration file 'nodes/pve/qemu-server/999.conf' does not exist"),
            b"",
        );
        assert!(gone.is_missing_object());
        let task = from_response(
            400,
            Some("Parameter verification failed."),
            br#"{"data":null,"errors":{"upid":"no such task"}}"#,
        );
        assert!(task.is_missing_object());
    }

    #[test]
    fn a_multi_line_message_becomes_one_line() {
        let body = br#"{"data":null,"message":"first line\nsecond line\n"}"#;
        let err = from_response(500, None, body);
        assert_eq!(err.to_string(), "HTTP 500: first line second line");
    }
}
