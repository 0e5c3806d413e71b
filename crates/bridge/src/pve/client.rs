//! `PveClient`: typed calls to the Proxmox VE API over one pooled HTTPS client.
//!
//! What the real pveproxy does, and how the client copes (reference `pve-api.md` §3.8):
//! - it closes idle keep-alive connections after ~5 s, after 100 requests, and after every
//!   answer >= 400. The pool forgets idle connections after 4 s, and a GET whose pooled
//!   connection turns out closed (reset, or closed before the answer) is sent once more on a
//!   fresh connection. A POST is never resent: it may have started a task already.
//! - it can be one of several cluster nodes (`urls`). When the endpoint in use cannot be
//!   reached (refused, connect timeout, TLS failure, repeated reset) the client moves to the
//!   next one and stays there. An HTTP error status is never a reason to move: that endpoint
//!   answered, and the others would answer the same.
//! - a request for a node that is down is held by pveproxy for up to 30 s before a 595; a
//!   slow answer is therefore reported as [`PveError::Timeout`], not as a dead endpoint.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, Response, Url};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::error::{self, PveError};
use super::tls;
use super::types::GuestKind;
use crate::config::ProxmoxConfig;
use crate::types::ProxmoxUrl;

mod agent;
mod calls;
mod decode;
mod node_power;

use decode::decode_data;
pub use decode::{
    decode_cluster_resources, for_each_cluster_resource, for_each_cluster_row, row_hash, RawRow,
};
pub use node_power::ClusterNodeRow;
mod health;

pub use health::{
    CephCheck, CephHealth, CephOsdMap, CephPgMap, CephStatus, HaStatusRow, ReplicationJob,
};
mod snapshots;

pub use snapshots::SnapshotEntry;

/// Below pveproxy's 5 s keep-alive timeout, so the pool rarely picks a connection the server
/// is closing at that very moment.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// A Proxmox endpoint on the LAN that has not accepted a connection in 5 s is down; waiting
/// longer only delays the failover.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Proxmox VE API client for one cluster. Cloning is cheap and clones share the connection
/// pool and the endpoint in use.
#[derive(Clone)]
pub struct PveClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// Index into `endpoints` of the one in use.
    current: AtomicUsize,
    /// `PVEAPIToken=…`, marked sensitive so no HTTP-layer debug output shows it.
    authorization: HeaderValue,
    /// `user@realm!tokenid`, safe to show.
    token_id: String,
    /// Requests by endpoint, for `/metrics` (set by the bridge, not by `check`).
    counts: std::sync::OnceLock<Arc<crate::http::RequestCounts>>,
}

struct Endpoint {
    /// The configured URL, normalised (`https://pve:8006`): what logs and errors show.
    display: String,
    /// `display` + `/api2/json`.
    api_base: Url,
}

/// One request, described once so it can be sent again (retry, failover).
struct Call<'a> {
    method: Method,
    segments: &'a [&'a str],
    query: &'a [(&'a str, String)],
    form: Option<&'a [(&'a str, String)]>,
}

impl Call<'_> {
    fn get<'a>(segments: &'a [&'a str]) -> Call<'a> {
        Call {
            method: Method::GET,
            segments,
            query: &[],
            form: None,
        }
    }

    /// `GET /nodes/pve/status`: names the endpoint in logs and decode errors.
    fn label(&self) -> String {
        format!("{} /{}", self.method, self.segments.join("/"))
    }

    /// Only GETs may be sent twice: every POST we make starts something.
    fn is_idempotent(&self) -> bool {
        self.method == Method::GET
    }
}

/// How a send failed, which decides between retry, failover and giving up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendFailure {
    /// Nothing reached the server: refused, DNS, connect timeout, TLS handshake.
    Connect,
    /// The connection died under the request (reset, closed before the answer): typical of
    /// a pooled connection that pveproxy closed at the same moment.
    ConnectionLost,
    /// The server took the request but did not answer in time.
    Timeout,
    Other,
}

struct Failure {
    error: PveError,
    may_fail_over: bool,
}

impl PveClient {
    /// Builds the client; fails on settings that can never work (no URL, a malformed URL,
    /// an unreadable `ca_file`, a token that cannot be an HTTP header). Does no I/O beyond
    /// reading `ca_file`: the first request finds out whether Proxmox is reachable.
    pub fn new(cfg: &ProxmoxConfig) -> Result<PveClient, PveError> {
        if cfg.urls.is_empty() {
            return Err(PveError::Config {
                message: "no Proxmox URL configured".into(),
            });
        }
        let endpoints = cfg
            .urls
            .iter()
            .map(parse_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        let tls = tls::client_config(cfg)?;
        let mut authorization =
            HeaderValue::from_str(&cfg.token.header_value()).map_err(|_| PveError::Config {
                message: format!(
                    "API token {} contains characters that cannot be sent in an HTTP header",
                    cfg.token.id()
                ),
            })?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .user_agent(concat!("pve2mqtt/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.timeout))
            .timeout(cfg.timeout)
            // pveproxy never redirects API calls; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PveError::Config {
                message: format!("HTTP client setup failed: {e}"),
            })?;
        Ok(PveClient {
            inner: Arc::new(Inner {
                http,
                endpoints,
                current: AtomicUsize::new(0),
                authorization,
                token_id: cfg.token.id(),
                counts: Default::default(),
            }),
        })
    }

    /// The endpoint in use (`https://pve:8006`), for logs and `pve2mqtt check`.
    pub fn current_url(&self) -> String {
        let index = self.inner.current.load(Ordering::Acquire) % self.inner.endpoints.len();
        self.inner.endpoints[index].display.clone()
    }

    /// The token's `user@realm!tokenid`: the user of every task the bridge starts.
    pub fn token_id(&self) -> &str {
        &self.inner.token_id
    }

    /// Counts every request of this client (and its clones) into `counts`.
    pub fn count_requests(&self, counts: Arc<crate::http::RequestCounts>) {
        let _ = self.inner.counts.set(counts);
    }

    async fn get_data<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, PveError> {
        let body = self.execute(call).await?;
        decode_data(&call.label(), &body)
    }

    /// `GET` of a guest's endpoint `nodes/{node}/{qemu|lxc}/{vmid}/{path…}`.
    async fn guest_get<T: DeserializeOwned>(
        &self,
        (node, kind, vmid): (&str, GuestKind, u32),
        path: &[&str],
    ) -> Result<T, PveError> {
        let vmid = vmid.to_string();
        self.get_data(&Call::get(&guest_segments(node, kind, &vmid, path)))
            .await
    }

    /// Sends `call` to the endpoint in use, failing over to the next ones on transport
    /// failures, and returns the body of a 2xx answer.
    async fn execute(&self, call: &Call<'_>) -> Result<Vec<u8>, PveError> {
        let result = self.execute_on_any(call).await;
        if let Some(counts) = self.inner.counts.get() {
            counts.count(call.method.as_str(), call.segments, result.is_err());
        }
        result
    }

    async fn execute_on_any(&self, call: &Call<'_>) -> Result<Vec<u8>, PveError> {
        let count = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Acquire) % count;
        let mut attempt = 0;
        loop {
            let index = (first + attempt) % count;
            match self.send_to(index, call).await {
                Ok(response) => {
                    // Stick to whichever endpoint answered.
                    self.inner.current.store(index, Ordering::Release);
                    return self.read_answer(index, call, response).await;
                }
                Err(failure) if failure.may_fail_over && attempt + 1 < count => {
                    let next = (index + 1) % count;
                    let from = &self.inner.endpoints[index].display;
                    let to = &self.inner.endpoints[next].display;
                    let moved = self
                        .inner
                        .current
                        .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    let reason = failure_reason(&failure.error);
                    if moved {
                        warn!(from = %from, to = %to, error = %reason,
                            "Proxmox endpoint {from} unreachable ({reason}), failing over to {to}");
                    } else {
                        debug!(from = %from, to = %to, error = %reason, "endpoint already switched by another request");
                    }
                    attempt += 1;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// One endpoint: send, and resend a GET once when its connection was lost mid-request.
    async fn send_to(&self, index: usize, call: &Call<'_>) -> Result<Response, Failure> {
        let endpoint = &self.inner.endpoints[index];
        let mut url = endpoint.api_base.clone();
        match url.path_segments_mut() {
            Ok(mut path) => {
                path.pop_if_empty().extend(call.segments);
            }
            // Unreachable: parse_endpoint only accepts http(s) URLs, which have a path.
            Err(()) => {
                return Err(Failure {
                    error: PveError::Config {
                        message: format!("{} cannot take a path", endpoint.display),
                    },
                    may_fail_over: false,
                })
            }
        }
        let mut resent = false;
        loop {
            let mut request = self
                .inner
                .http
                .request(call.method.clone(), url.clone())
                .header(AUTHORIZATION, self.inner.authorization.clone());
            if !call.query.is_empty() {
                request = request.query(call.query);
            }
            if let Some(form) = call.form {
                request = request.form(form);
            }
            let started = Instant::now();
            match request.send().await {
                Ok(response) => return Ok(response),
                Err(err) => {
                    let kind = classify(&err);
                    if kind == SendFailure::ConnectionLost && call.is_idempotent() && !resent {
                        debug!(endpoint = %endpoint.display, call = %call.label(), error = %describe(&err),
                            "connection lost under the request, sending it again on a fresh one");
                        resent = true;
                        continue;
                    }
                    debug!(endpoint = %endpoint.display, call = %call.label(), elapsed = ?started.elapsed(),
                        error = %describe(&err), "request failed");
                    let error = if err.is_timeout() {
                        PveError::Timeout {
                            url: endpoint.display.clone(),
                        }
                    } else {
                        PveError::Transport {
                            url: endpoint.display.clone(),
                            message: describe(&err),
                        }
                    };
                    let may_fail_over = match kind {
                        SendFailure::Connect => true,
                        SendFailure::ConnectionLost => call.is_idempotent(),
                        SendFailure::Timeout | SendFailure::Other => false,
                    };
                    return Err(Failure {
                        error,
                        may_fail_over,
                    });
                }
            }
        }
    }

    /// Reads the body; a status >= 300 becomes the matching [`PveError`].
    async fn read_answer(
        &self,
        index: usize,
        call: &Call<'_>,
        response: Response,
    ) -> Result<Vec<u8>, PveError> {
        let endpoint = &self.inner.endpoints[index];
        let status = response.status();
        // pveproxy writes the error's first line as the reason phrase; hyper keeps a
        // non-canonical phrase as this extension.
        let reason_phrase = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|phrase| String::from_utf8_lossy(phrase.as_bytes()).into_owned());
        let body = match read_body(response).await {
            Ok(body) => body,
            // An error answer is still an answer: report its status even if the body broke.
            Err(_) if !status.is_success() => Default::default(),
            Err(err) if err.is_timeout() => {
                return Err(PveError::Timeout {
                    url: endpoint.display.clone(),
                })
            }
            Err(err) => {
                return Err(PveError::Transport {
                    url: endpoint.display.clone(),
                    message: describe(&err),
                })
            }
        };
        debug!(endpoint = %endpoint.display, call = %call.label(), status = status.as_u16(), bytes = body.len(),
            "Proxmox answered");
        if status.is_success() {
            Ok(body)
        } else {
            Err(error::from_response(
                status.as_u16(),
                reason_phrase.as_deref(),
                &body,
            ))
        }
    }
}

/// The most a body's announced length reserves up front; a longer body still grows.
const MAX_RESERVED_BODY: u64 = 64 << 20;

/// Reads a body chunk by chunk into one buffer reserved from its `Content-Length`.
/// `Response::bytes` keeps every chunk until the end and then copies them into a second
/// buffer of the full size: at 5,000 guests the fast lane's answer is 1.6 MB, so each
/// poll held twice that, plus the copy.
async fn read_body(mut response: Response) -> Result<Vec<u8>, reqwest::Error> {
    let reserved = response
        .content_length()
        .unwrap_or(0)
        .min(MAX_RESERVED_BODY);
    let mut body = Vec::with_capacity(usize::try_from(reserved).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl std::fmt::Debug for PveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|e| e.display.as_str())
            .collect();
        f.debug_struct("PveClient")
            .field("urls", &urls)
            .field("current", &self.current_url())
            .field("token", &self.inner.token_id)
            .finish_non_exhaustive()
    }
}

/// Derives the API base of one configured URL; [`ProxmoxUrl`] has checked it already
/// (scheme, host, no credentials, no path).
fn parse_endpoint(url: &ProxmoxUrl) -> Result<Endpoint, PveError> {
    let display = url.as_str().to_owned();
    let api_base = Url::parse(&format!("{display}/api2/json")).map_err(|e| PveError::Config {
        message: format!("Proxmox URL {display:?} is not valid: {e}"),
    })?;
    Ok(Endpoint { display, api_base })
}

fn classify(err: &reqwest::Error) -> SendFailure {
    if err.is_connect() {
        return SendFailure::Connect;
    }
    if err.is_timeout() {
        return SendFailure::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message()
                || hyper_error.is_canceled()
                || hyper_error.is_closed()
            {
                return SendFailure::ConnectionLost;
            }
        }
        if let Some(io_error) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof,
            };
            if matches!(
                io_error.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return SendFailure::ConnectionLost;
            }
        }
        source = cause.source();
    }
    SendFailure::Other
}

/// The error chain below reqwest's "error sending request for url (…)", e.g.
/// `tcp connect error: Connection refused (os error 111)` or `invalid peer certificate:
/// UnknownIssuer`. Built from error messages only, which never contain request headers.
fn describe(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = tls_failure_text(cause).unwrap_or_else(|| cause.to_string());
        // hyper-util's wrapper ("client error (Connect)") adds nothing to its cause.
        let is_wrapper = text.starts_with("client error (");
        if !text.is_empty() && !is_wrapper && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        return err.to_string();
    }
    parts.join(": ")
}

/// rustls prints certificate errors with `Debug` (`Other(OtherError(…))`); show our own
/// fingerprint message as the sentence it is, and say how to fix an untrusted certificate. The rustls error reaches us wrapped in
/// `io::Error`s (two, via hyper-rustls), whose `source()` skips the wrapped error, hence
/// the walk through `get_ref`.
fn tls_failure_text(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = cause;
    loop {
        if let Some(rustls::Error::InvalidCertificate(problem)) =
            current.downcast_ref::<rustls::Error>()
        {
            return Some(match problem {
                rustls::CertificateError::Other(other) => format!("invalid peer certificate: {}", other.0),
                _ => format!(
                    "invalid peer certificate: {problem:?} (trust the cluster CA with ca_file = Proxmox's \
                     pve-root-ca.pem, or pin the certificate with fingerprint)"
                ),
            });
        }
        let inner: &(dyn std::error::Error + 'static) =
            current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
}

fn failure_reason(error: &PveError) -> String {
    match error {
        PveError::Transport { message, .. } => message.clone(),
        PveError::Timeout { .. } => "timed out".into(),
        other => other.to_string(),
    }
}

/// `nodes/{node}/{qemu|lxc}/{vmid}/{path…}`: the segments of a guest's endpoint.
fn guest_segments<'a>(
    node: &'a str,
    kind: GuestKind,
    vmid: &'a str,
    path: &[&'a str],
) -> Vec<&'a str> {
    let mut segments = vec!["nodes", node, kind.as_str(), vmid];
    segments.extend_from_slice(path);
    segments
}

#[cfg(test)]
mod tests;
