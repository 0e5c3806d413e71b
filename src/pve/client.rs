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
use serde::Deserialize;
use tracing::{debug, warn};

use super::error::{self, PveError};
use super::tls;
use super::types::{
    ClusterStatusRow, GuestKind, GuestStatus, NodeStatus, Permissions, Resource, StorageItem,
    TaskListEntry, TaskLog, TaskLogLine, TaskStatus, Version, VzdumpStarted,
};
use super::upid::Upid;
use crate::config::ProxmoxConfig;

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
            .map(|url| parse_endpoint(url))
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
            }),
        })
    }

    /// The endpoint in use (`https://pve:8006`), for logs and `pve2mqtt check`.
    pub fn current_url(&self) -> String {
        let index = self.inner.current.load(Ordering::Acquire) % self.inner.endpoints.len();
        self.inner.endpoints[index].display.clone()
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<Version, PveError> {
        self.get_data(&Call::get(&["version"])).await
    }

    /// `GET /cluster/resources` without a type filter: nodes, guests, storages, pools, SDN.
    pub async fn cluster_resources(&self) -> Result<Vec<Resource>, PveError> {
        let body = self.cluster_resources_body().await?;
        decode_cluster_resources(&body)
    }

    /// `GET /cluster/resources`, undecoded: the fast lane streams its rows with
    /// [`for_each_cluster_resource`] and keeps the body (not thousands of decoded rows)
    /// to rebuild the view when the slow lane brings news.
    pub async fn cluster_resources_body(&self) -> Result<Vec<u8>, PveError> {
        self.execute(&Call::get(&["cluster", "resources"])).await
    }

    /// `GET /cluster/status` (needs `Sys.Audit` on `/`).
    pub async fn cluster_status(&self) -> Result<Vec<ClusterStatusRow>, PveError> {
        self.get_data(&Call::get(&["cluster", "status"])).await
    }

    /// `GET /nodes/{node}/status` (proxied to that node: 595 when it is down).
    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, PveError> {
        self.get_data(&Call::get(&["nodes", node, "status"])).await
    }

    /// `GET /nodes/{node}/storage/{storage}/content`, optionally only one content type
    /// (`backup`).
    pub async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: Option<&str>,
    ) -> Result<Vec<StorageItem>, PveError> {
        let query: Vec<(&str, String)> = content
            .map(|c| ("content", c.to_owned()))
            .into_iter()
            .collect();
        self.get_data(&Call {
            query: &query,
            ..Call::get(&["nodes", node, "storage", storage, "content"])
        })
        .await
    }

    /// `GET /nodes/{node}/{qemu|lxc}/{vmid}/status/current`.
    pub async fn guest_status(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<GuestStatus, PveError> {
        let vmid = vmid.to_string();
        self.get_data(&Call::get(&[
            "nodes",
            node,
            kind.as_str(),
            &vmid,
            "status",
            "current",
        ]))
        .await
    }

    /// `GET /access/permissions`: the token's own effective privileges.
    pub async fn permissions(&self) -> Result<Permissions, PveError> {
        self.get_data(&Call::get(&["access", "permissions"])).await
    }

    /// The token's `user@realm!tokenid`: the user of every task the bridge starts.
    pub fn token_id(&self) -> &str {
        &self.inner.token_id
    }

    /// `GET /nodes/{node}/tasks` with Proxmox's filters (`source`, `typefilter`, `vmid`,
    /// `limit`, …) as query parameters.
    pub async fn node_tasks(
        &self,
        node: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<TaskListEntry>, PveError> {
        self.get_data(&Call {
            query: params,
            ..Call::get(&["nodes", node, "tasks"])
        })
        .await
    }

    /// `POST /nodes/{node}/{qemu|lxc}/{vmid}/status/{action}` (form-encoded `params`;
    /// booleans must be `0`/`1`). Returns the task to follow. Never retried.
    pub async fn guest_action(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        action: &str,
        params: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        let vmid = vmid.to_string();
        let segments = ["nodes", node, kind.as_str(), &vmid, "status", action];
        let call = Call {
            method: Method::POST,
            segments: &segments,
            query: &[],
            form: Some(params),
        };
        let body = self.execute(&call).await?;
        let text: String = decode_data(&call.label(), &body)?;
        text.parse()
            .map_err(|e: super::upid::UpidParseError| PveError::Decode {
                endpoint: call.label(),
                message: e.to_string(),
            })
    }

    /// `POST /nodes/{node}/vzdump`. Proxmox answers a UPID, or the literal `OK` when none of
    /// the listed guests lives on this node. Never retried.
    pub async fn vzdump(
        &self,
        node: &str,
        params: &[(&str, String)],
    ) -> Result<VzdumpStarted, PveError> {
        let segments = ["nodes", node, "vzdump"];
        let call = Call {
            method: Method::POST,
            segments: &segments,
            query: &[],
            form: Some(params),
        };
        let body = self.execute(&call).await?;
        let text: String = decode_data(&call.label(), &body)?;
        if text == "OK" {
            return Ok(VzdumpStarted::NothingLocal);
        }
        text.parse()
            .map(VzdumpStarted::Task)
            .map_err(|e: super::upid::UpidParseError| PveError::Decode {
                endpoint: call.label(),
                message: e.to_string(),
            })
    }

    /// `GET /nodes/{node}/tasks/{upid}/status`, asked of the node named in the UPID (any
    /// other node answers `no such task`).
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        self.get_data(&Call::get(&[
            "nodes",
            &upid.node,
            "tasks",
            upid.as_str(),
            "status",
        ]))
        .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/log?start=&limit=` (`limit` 0 = everything). Lines
    /// are numbered from 1; `total` is the length of the whole log.
    ///
    /// Pages follow the line numbers, not the count received: when nothing lies past
    /// `start`, Proxmox (`dump_logfile`) answers one synthetic line `no content` numbered
    /// one past the end, and a reader that advanced by one would skip the next real line.
    /// So a page that is only that line holds no lines and keeps `start`, and
    /// `next_start` is the number of the last real line. (A task that logs exactly
    /// `no content` as its newest line has it read with the next page.)
    pub async fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<TaskLog, PveError> {
        #[derive(Deserialize)]
        struct LogEnvelope {
            data: Vec<TaskLogLine>,
            #[serde(default, deserialize_with = "super::de::opt_u64")]
            total: Option<u64>,
        }
        let query = [("start", start.to_string()), ("limit", limit.to_string())];
        let segments = ["nodes", &upid.node, "tasks", upid.as_str(), "log"];
        let call = Call {
            query: &query,
            ..Call::get(&segments)
        };
        let body = self.execute(&call).await?;
        let envelope: LogEnvelope = decode(&call.label(), &body)?;
        let total = envelope.total.unwrap_or(start + envelope.data.len() as u64);
        let mut lines = envelope.data;
        if let [only] = lines.as_slice() {
            if only.text() == "no content" {
                lines.clear();
            }
        }
        // Lines at or before `start` are not new (a synthetic line can be numbered so).
        lines.retain(|line| line.n.is_none_or(|n| n > start));
        let next_start = lines
            .iter()
            .filter_map(|line| line.n)
            .max()
            .unwrap_or(start + lines.len() as u64)
            .max(start);
        Ok(TaskLog {
            lines,
            total,
            next_start,
        })
    }

    async fn get_data<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, PveError> {
        let body = self.execute(call).await?;
        decode_data(&call.label(), &body)
    }

    /// Sends `call` to the endpoint in use, failing over to the next ones on transport
    /// failures, and returns the body of a 2xx answer.
    async fn execute(&self, call: &Call<'_>) -> Result<Vec<u8>, PveError> {
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
        let body = match response.bytes().await {
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
            // No copy when the buffer is unshared (as hyper hands it over).
            Ok(Vec::from(body))
        } else {
            Err(error::from_response(
                status.as_u16(),
                reason_phrase.as_deref(),
                &body,
            ))
        }
    }
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

/// Validates one configured URL and derives its API base.
fn parse_endpoint(raw: &str) -> Result<Endpoint, PveError> {
    let raw = raw.trim();
    let mut url = Url::parse(raw).map_err(|e| PveError::Config {
        message: format!("Proxmox URL {raw:?} is not valid: {e}"),
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(PveError::Config {
            message: format!("Proxmox URL {raw:?} must be http(s)://host[:port]"),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo the URL: it holds a password.
        return Err(PveError::Config {
            message:
                "a Proxmox URL must not contain a user or password; authentication is the API token"
                    .into(),
        });
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/');
    // Accept a URL pasted with the API prefix already on it.
    let path = path.strip_suffix("/api2/json").unwrap_or(path).to_owned();
    let display = format!("{}{}", url.origin().ascii_serialization(), path);
    url.set_path(&format!("{path}/api2/json"));
    Ok(Endpoint {
        display,
        api_base: url,
    })
}

/// Decodes a `GET /cluster/resources` answer exactly as the fast lane does; public so the
/// `poll_cost` benchmark measures the real decoder.
pub fn decode_cluster_resources(body: &[u8]) -> Result<Vec<Resource>, PveError> {
    decode_data("GET /cluster/resources", body)
}

/// Decodes a `GET /cluster/resources` answer one row at a time, handing each row to
/// `each_row`, and returns how many rows there were. At 5,000 guests a `Vec<Resource>`
/// is ~4 MB (more while it doubles), allocated and freed on every poll; one row at a
/// time, the fast lane's transient memory is the body and one row.
///
/// On malformed input `each_row` may already have seen the rows before the fault: the
/// caller must discard what it built. The error is the one [`decode_cluster_resources`]
/// gives (endpoint and JSON path).
pub fn for_each_cluster_resource(
    body: &[u8],
    mut each_row: impl FnMut(Resource),
) -> Result<usize, PveError> {
    let streamed = std::str::from_utf8(body).ok().and_then(|text| {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let rows = serde::de::DeserializeSeed::deserialize(
            RowStream::Envelope(&mut each_row),
            &mut deserializer,
        )
        .ok()?;
        deserializer.end().ok()?;
        Some(rows)
    });
    match streamed {
        Some(rows) => Ok(rows),
        // Decode again, the slow way, for an error that names the field. (Should that
        // succeed where streaming failed, the rows seen are still incomplete: an error.)
        None => Err(decode_cluster_resources(body)
            .err()
            .unwrap_or_else(|| PveError::Decode {
                endpoint: "GET /cluster/resources".to_owned(),
                message: "the answer could not be read row by row".to_owned(),
            })),
    }
}

/// The seed behind [`for_each_cluster_resource`]: `{"data": [row, …]}` → one call per row.
enum RowStream<'f, F> {
    Envelope(&'f mut F),
    Rows(&'f mut F),
}

impl<'de, F: FnMut(Resource)> serde::de::DeserializeSeed<'de> for RowStream<'_, F> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        match self {
            // As serde's derive does, so both decoders accept exactly the same input.
            RowStream::Envelope(_) => deserializer.deserialize_struct("Envelope", &["data"], self),
            RowStream::Rows(_) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de, F: FnMut(Resource)> serde::de::Visitor<'de> for RowStream<'_, F> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RowStream::Envelope(_) => f.write_str("an object with a `data` list"),
            RowStream::Rows(_) => f.write_str("a list of resources"),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let (RowStream::Envelope(each_row) | RowStream::Rows(each_row)) = self;
        let mut rows = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "data" {
                if rows.is_some() {
                    return Err(serde::de::Error::duplicate_field("data"));
                }
                rows = Some(map.next_value_seed(RowStream::Rows(&mut *each_row))?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        rows.ok_or_else(|| serde::de::Error::missing_field("data"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let each_row = match self {
            // The envelope in its sequence form, `[[row, …]]`.
            RowStream::Envelope(each_row) => {
                return seq
                    .next_element_seed(RowStream::Rows(each_row))?
                    .ok_or_else(|| {
                        serde::de::Error::invalid_length(0, &"an object with a `data` list")
                    });
            }
            RowStream::Rows(each_row) => each_row,
        };
        let mut rows = 0;
        while let Some(row) = seq.next_element::<Resource>()? {
            each_row(row);
            rows += 1;
        }
        Ok(rows)
    }
}

/// Decodes `{"data": T}`, naming the endpoint and the JSON path on failure.
fn decode_data<T: DeserializeOwned>(label: &str, body: &[u8]) -> Result<T, PveError> {
    #[derive(Deserialize)]
    struct Envelope<T> {
        data: T,
    }
    let envelope: Envelope<T> = decode(label, body)?;
    Ok(envelope.data)
}

fn decode<T: DeserializeOwned>(label: &str, body: &[u8]) -> Result<T, PveError> {
    // The plain decoder first: path tracking costs on every field, and the fast lane
    // decodes megabytes per poll at cluster scale. Only a failure is decoded again,
    // with the path, for an error message that names the field.
    // UTF-8 is checked once for the whole body (fast, vectorised), so the parser does not
    // validate every string again as `from_slice` does.
    if let Ok(Ok(value)) = std::str::from_utf8(body).map(serde_json::from_str) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = if path == "." {
            err.inner().to_string()
        } else {
            format!("{path}: {}", err.inner())
        };
        PveError::Decode {
            endpoint: label.to_owned(),
            message,
        }
    })
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

#[cfg(test)]
mod tests;
