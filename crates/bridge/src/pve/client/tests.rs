//! `PveClient` against real sockets: a scripted HTTP/1.1 responder written on a bare
//! `TcpListener`, so each test controls the exact status line (Proxmox's reason phrases),
//! the body, and when a connection is closed; and, with the `sim` feature, TLS servers
//! (rcgen certificates served by axum-server) for the trust settings.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::config::{ApiToken, Secret};
use crate::pve::{GuestKind, ResourceKind, Upid, VzdumpStarted};

/// Distinctive, so a leak is found by substring search.
const SECRET: &str = "5ecr3t-aaaa-bbbb-cccc-0123456789ab";

fn config(urls: Vec<String>) -> ProxmoxConfig {
    ProxmoxConfig {
        urls: urls
            .iter()
            .map(|url| crate::types::ProxmoxUrl::parse(url).unwrap())
            .collect(),
        token: ApiToken {
            user: "pve2mqtt@pve".into(),
            token_id: "bridge".into(),
            secret: Secret::new(SECRET),
        },
        tls_verify: true,
        ca_file: None,
        fingerprint: None,
        name: None,
        timeout: Duration::from_secs(5),
    }
}

/// Asserts the secret shows in neither `Display` nor `Debug` of `err`.
fn assert_no_secret(err: &PveError) {
    let shown = format!("{err} / {err:?}");
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
    assert!(
        !shown.contains("PVEAPIToken"),
        "auth header leaked: {shown}"
    );
}

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    /// As sent, percent-encoding included.
    target: String,
    headers: Vec<(String, String)>,
    body: String,
    /// 0-based number of the TCP connection it came on.
    connection: usize,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

enum Reply {
    /// Raw response bytes; `close` ends the connection after writing them.
    Send { raw: String, close: bool },
    /// Close the connection without answering (a keep-alive connection closed by the server
    /// just as the request arrived).
    HangUp,
    /// Never answer (a proxied request to a node that is down).
    Stall,
}

type Script = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

/// A scripted HTTP/1.1 server on 127.0.0.1. `script(request, n)` decides the reply to the
/// n-th request (0-based, over all connections).
struct RawServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    async fn start(
        script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Script = Arc::new(script);
        let connections = Arc::new(AtomicUsize::new(0));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let connection = connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(
                    stream,
                    connection,
                    recorded.clone(),
                    script.clone(),
                ));
            }
        });
        RawServer {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    connection: usize,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Script,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                headers.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let request = Recorded {
            method,
            target,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            connection,
        };
        let number = {
            let mut all = requests.lock().unwrap();
            all.push(request.clone());
            all.len() - 1
        };
        match script(&request, number) {
            Reply::Send { raw, close } => {
                if reader.get_mut().write_all(raw.as_bytes()).await.is_err() || close {
                    return;
                }
            }
            Reply::HangUp => return,
            Reply::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
        }
    }
}

/// `HTTP/1.1 {status_line}` with a body; error statuses close the connection, as pveproxy does.
fn response(status_line: &str, content_type: Option<&str>, body: &str) -> Reply {
    let close = !status_line.starts_with("200");
    let mut raw = format!(
        "HTTP/1.1 {status_line}\r\nServer: pve-api-daemon/3.0\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        raw.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    raw.push_str(if close {
        "Connection: close\r\n"
    } else {
        "Connection: Keep-Alive\r\n"
    });
    raw.push_str("\r\n");
    raw.push_str(body);
    Reply::Send { raw, close }
}

fn json_ok(body: &str) -> Reply {
    response("200 OK", Some("application/json;charset=UTF-8"), body)
}

const VERSION_BODY: &str =
    r#"{"data":{"release":"9.1","version":"9.1.2","repoid":"9d436f37a0ac4172"}}"#;

fn client_for(urls: Vec<String>) -> PveClient {
    PveClient::new(&config(urls)).unwrap()
}

#[tokio::test]
async fn the_token_arrives_in_the_authorization_header_and_version_decodes() {
    // Given a server that answers /version
    let server = RawServer::start(|_, _| json_ok(VERSION_BODY)).await;
    let client = client_for(vec![server.url()]);

    // When the client asks for the version
    let version = client.version().await.unwrap();

    // Then the request carried the token header on the API path, and the answer decoded
    assert_eq!(version.release.as_deref(), Some("9.1"));
    assert_eq!(version.version.as_deref(), Some("9.1.2"));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].target, "/api2/json/version");
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("PVEAPIToken=pve2mqtt@pve!bridge={SECRET}").as_str())
    );
    assert!(requests[0]
        .header("user-agent")
        .unwrap()
        .starts_with("pve2mqtt/"));
    assert_eq!(client.current_url(), server.url());
}

#[tokio::test]
async fn a_401_with_an_empty_body_maps_to_unauthorized_with_the_reason_phrase() {
    let server = RawServer::start(|_, _| response("401 Authentication failed!", None, "")).await;
    let err = client_for(vec![server.url()]).version().await.unwrap_err();
    assert!(
        matches!(&err, PveError::Unauthorized { reason } if reason == "Authentication failed!"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "HTTP 401: Authentication failed! (check the API token)"
    );
    assert_no_secret(&err);
}

#[tokio::test]
async fn a_403_json_message_maps_to_forbidden_with_proxmox_text() {
    let server = RawServer::start(|_, _| {
        response(
            "403 Permission check failed (/vms/100, VM.PowerMgmt)",
            Some("application/json;charset=UTF-8"),
            r#"{"data":null,"message":"Permission check failed (/vms/100, VM.PowerMgmt)\n"}"#,
        )
    })
    .await;
    let client = client_for(vec![server.url()]);
    let err = client
        .guest_action("pve", GuestKind::Qemu, 100, "start", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PveError::Forbidden { reason } if reason == "Permission check failed (/vms/100, VM.PowerMgmt)"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "HTTP 403: Permission check failed (/vms/100, VM.PowerMgmt)"
    );
    assert_no_secret(&err);
}

#[tokio::test]
async fn a_595_with_an_empty_body_maps_to_node_unreachable() {
    let server = RawServer::start(|_, _| response("595 Connection refused", None, "")).await;
    let err = client_for(vec![server.url()])
        .node_status("pve2")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PveError::NodeUnreachable { status: 595, reason } if reason == "Connection refused"),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(server.requests()[0].target, "/api2/json/nodes/pve2/status");
}

#[tokio::test]
async fn a_400_keeps_the_errors_map_and_the_post_is_form_encoded() {
    // Given a server that rejects the parameters like Proxmox's schema validation does
    let server = RawServer::start(|_, _| {
        response(
            "400 Parameter verification failed.",
            Some("application/json;charset=UTF-8"),
            r#"{"errors":{"timeout":"type check ('integer') failed - got 'soon'"},"data":null,"message":"Parameter verification failed.\n"}"#,
        )
    })
    .await;
    let client = client_for(vec![server.url()]);

    // When a shutdown is posted with a bad parameter
    let err = client
        .guest_action(
            "pve",
            GuestKind::Lxc,
            101,
            "shutdown",
            &[("timeout", "soon".into()), ("forceStop", "1".into())],
        )
        .await
        .unwrap_err();

    // Then the map survives, and the request was one form-encoded POST to the right path
    let errors = crate::pve::error::parameter_errors(&err);
    assert_eq!(
        errors["timeout"].as_str(),
        Some("type check ('integer') failed - got 'soon'")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "a POST is never resent");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(
        requests[0].target,
        "/api2/json/nodes/pve/lxc/101/status/shutdown"
    );
    assert_eq!(
        requests[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(requests[0].body, "timeout=soon&forceStop=1");
}

#[tokio::test]
async fn a_lifecycle_post_returns_the_upid() {
    let upid = "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:100:pve2mqtt@pve!bridge:";
    let body = format!(r#"{{"data":"{upid}"}}"#);
    let server = RawServer::start(move |_, _| json_ok(&body)).await;
    let started = client_for(vec![server.url()])
        .guest_action("pve", GuestKind::Qemu, 100, "start", &[])
        .await
        .unwrap();
    assert_eq!(started.to_string(), upid);
    assert_eq!(started.token_id(), Some("bridge"));
    assert_eq!(
        server.requests()[0].target,
        "/api2/json/nodes/pve/qemu/100/status/start"
    );
}

#[tokio::test]
async fn vzdump_answers_a_upid_or_the_literal_ok() {
    let server = RawServer::start(|_, n| {
        if n == 0 {
            json_ok(r#"{"data":"UPID:pve1:0020C066:042DF204:69C26EB0:vzdump::root@pam:"}"#)
        } else {
            json_ok(r#"{"data":"OK"}"#)
        }
    })
    .await;
    let client = client_for(vec![server.url()]);
    let params = [
        ("vmid", "100,101".to_owned()),
        ("mode", "snapshot".to_owned()),
    ];
    match client.vzdump("pve1", &params).await.unwrap() {
        VzdumpStarted::Task(upid) => assert_eq!(upid.task_type, "vzdump"),
        other => panic!("expected a task, got {other:?}"),
    }
    assert_eq!(
        client.vzdump("pve1", &params).await.unwrap(),
        VzdumpStarted::NothingLocal
    );
    assert_eq!(server.requests()[0].body, "vmid=100%2C101&mode=snapshot");
}

#[tokio::test]
async fn a_post_answer_that_is_not_a_upid_is_a_decode_error() {
    let server = RawServer::start(|_, _| json_ok(r#"{"data":"started"}"#)).await;
    let err = client_for(vec![server.url()])
        .guest_action("pve", GuestKind::Qemu, 100, "start", &[])
        .await
        .unwrap_err();
    let PveError::Decode { endpoint, message } = &err else {
        panic!("expected Decode, got {err:?}");
    };
    assert_eq!(endpoint, "POST /nodes/pve/qemu/100/status/start");
    assert!(message.contains("\"started\""), "{message}");
}

#[tokio::test]
async fn task_status_and_log_go_to_the_node_named_in_the_upid() {
    // Given a task started on another node than the endpoint's
    let text = "UPID:pvedev01-dc03:00060E10:00821A34:6803E819:qmcreate:666:root@pam!robin:";
    let upid: Upid = text.parse().unwrap();
    let server = RawServer::start(|request, _| {
        if request.target.contains("/log") {
            json_ok(r#"{"data":[{"n":1,"t":"starting"},{"n":2,"t":"TASK OK"}],"total":2}"#)
        } else {
            json_ok(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/pve/nodes_node_tasks_upid_status.stopped-ok-token.json"
            )))
        }
    })
    .await;
    let client = client_for(vec![server.url()]);

    // When its status and log are read
    let status = client.task_status(&upid).await.unwrap();
    let log = client.task_log(&upid, 0, 50).await.unwrap();

    // Then both went to /nodes/pvedev01-dc03/tasks/<upid>/…, and decoded
    assert!(status.succeeded());
    assert_eq!(log.total, 2);
    assert_eq!(log.lines[1].text(), "TASK OK");
    assert_eq!(log.lines[1].n, Some(2));
    let requests = server.requests();
    assert_eq!(
        requests[0].target,
        format!("/api2/json/nodes/pvedev01-dc03/tasks/{text}/status")
    );
    assert_eq!(
        requests[1].target,
        format!("/api2/json/nodes/pvedev01-dc03/tasks/{text}/log?start=0&limit=50")
    );
}

#[tokio::test]
async fn storage_content_filters_by_content_type_in_the_query() {
    let server = RawServer::start(|_, _| {
        json_ok(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pve/nodes_node_storage_storage_content.pbs-backups.json"
        )))
    })
    .await;
    let items = client_for(vec![server.url()])
        .storage_content("pve", "datastore", Some("backup"))
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        server.requests()[0].target,
        "/api2/json/nodes/pve/storage/datastore/content?content=backup"
    );
}

#[tokio::test]
async fn every_read_endpoint_hits_its_path_and_decodes_its_fixture() {
    let server = RawServer::start(|request, _| {
        let target = request.target.as_str();
        let body = if target.ends_with("/cluster/resources") {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/pve/cluster_resources.1node-lxc-qemu-storage-sdn.json"
            ))
        } else if target.ends_with("/cluster/status") {
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/pve/cluster_status.4node.json"))
        } else if target.ends_with("/nodes/pve/status") {
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/pve/nodes_node_status.pve9.1.2.json"))
        } else if target.ends_with("/status/current") {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/pve/nodes_node_qemu_vmid_status_current.pve8.x-qemu9.0-running.json"
            ))
        } else if target.ends_with("/access/permissions") {
            r#"{"data":{"/":{"Sys.Audit":1},"/vms":{"VM.PowerMgmt":1}}}"#
        } else if target.starts_with("/api2/json/nodes/pve1/tasks?") {
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/pve/nodes_node_tasks.vzdump-ok.json"))
        } else {
            return response("501 Method 'GET' not implemented", None, "");
        };
        json_ok(body)
    })
    .await;
    let client = client_for(vec![server.url()]);

    let resources = client.cluster_resources().await.unwrap();
    assert!(resources
        .iter()
        .any(|r| r.kind == ResourceKind::Lxc && r.vmid == Some(100)));
    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.len(), 5);
    let node = client.node_status("pve").await.unwrap();
    assert_eq!(node.loadavg, Some([1.74, 1.86, 1.50]));
    let guest = client
        .guest_status("pve", GuestKind::Qemu, 105)
        .await
        .unwrap();
    assert_eq!(guest.qmpstatus.as_deref(), Some("running"));
    let permissions = client.permissions().await.unwrap();
    assert!(permissions.has("/vms/100", "VM.PowerMgmt"));
    let tasks = client
        .node_tasks(
            "pve1",
            &[("typefilter", "vzdump".into()), ("limit", "1".into())],
        )
        .await
        .unwrap();
    assert!(tasks[0].succeeded());

    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        vec![
            "/api2/json/cluster/resources",
            "/api2/json/cluster/status",
            "/api2/json/nodes/pve/status",
            "/api2/json/nodes/pve/qemu/105/status/current",
            "/api2/json/access/permissions",
            "/api2/json/nodes/pve1/tasks?typefilter=vzdump&limit=1",
        ]
    );
}

#[tokio::test]
async fn a_decode_error_names_the_endpoint_and_the_json_path() {
    let server =
        RawServer::start(|_, _| json_ok(r#"{"data":{"memory":{"total":{"oops":1}}}}"#)).await;
    let err = client_for(vec![server.url()])
        .node_status("pve")
        .await
        .unwrap_err();
    let PveError::Decode { endpoint, message } = &err else {
        panic!("expected Decode, got {err:?}");
    };
    assert_eq!(endpoint, "GET /nodes/pve/status");
    assert!(
        message.starts_with("data.memory.total: expected a non-negative count, got an object"),
        "{message}"
    );
    assert!(!err.is_transient());
}

/// A server that answers the first request with keep-alive, then closes that connection
/// when the second request arrives on it, and answers normally on a new connection; and a
/// client that has made the first request.
async fn closing_server() -> (RawServer, PveClient) {
    let server = RawServer::start(|request, n| match (n, request.connection) {
        (1, 0) => Reply::HangUp,
        _ => json_ok(VERSION_BODY),
    })
    .await;
    let client = client_for(vec![server.url()]);
    client.version().await.unwrap();
    (server, client)
}

#[tokio::test]
async fn a_get_on_a_connection_closed_by_the_server_is_sent_again_once() {
    // Given a server that answers the first request with keep-alive, then closes that
    // connection when the second request arrives on it (pveproxy's 5 s idle close racing
    // the pool), and answers normally on a new connection
    let (server, client) = closing_server().await;

    // When the next GET goes out on the pooled connection
    let version = client.version().await.unwrap();

    // Then it was resent on a fresh connection and succeeded
    assert_eq!(version.release.as_deref(), Some("9.1"));
    let connections: Vec<usize> = server.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, vec![0, 0, 1]);
}

#[tokio::test]
async fn a_post_on_a_connection_closed_by_the_server_is_not_sent_again() {
    // Given the same closing server
    let (server, client) = closing_server().await;

    // When a POST goes out on the pooled connection and is cut off
    let err = client
        .guest_action("pve", GuestKind::Qemu, 100, "start", &[])
        .await
        .unwrap_err();

    // Then it fails as a transport error and Proxmox saw it exactly once
    assert!(matches!(err, PveError::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_no_secret(&err);
    let methods: Vec<String> = server.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, vec!["GET", "POST"]);
}

/// A port nothing listens on: bound, then released.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn a_dead_first_endpoint_fails_over_to_the_second_and_stays_there() {
    // Given a first URL that refuses connections and a second that works
    let dead = dead_url().await;
    let live = RawServer::start(|_, _| json_ok(VERSION_BODY)).await;
    let client = client_for(vec![dead.clone(), live.url()]);
    assert_eq!(client.current_url(), dead);

    // When requests are made
    client.version().await.unwrap();
    let copy = client.clone();
    copy.cluster_status().await.unwrap_err(); // the body is not a list: any answer will do

    // Then the second endpoint served both, and is the one in use for every clone
    assert_eq!(live.requests().len(), 2);
    assert_eq!(client.current_url(), live.url());
    assert_eq!(copy.current_url(), live.url());
}

#[tokio::test]
async fn when_every_endpoint_is_dead_the_error_names_the_last_one_tried() {
    let first = dead_url().await;
    let second = dead_url().await;
    let client = client_for(vec![first, second.clone()]);
    let err = client.version().await.unwrap_err();
    let PveError::Transport { url, message } = &err else {
        panic!("expected Transport, got {err:?}");
    };
    assert_eq!(url, &second);
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(err.is_transient());
    assert_no_secret(&err);
}

#[tokio::test]
async fn an_http_error_status_does_not_fail_over() {
    // Given two live endpoints, the first answering 500
    let first = RawServer::start(|_, _| {
        response(
            "500 cluster not ready - no quorum?",
            Some("application/json;charset=UTF-8"),
            r#"{"data":null,"message":"cluster not ready - no quorum?\n"}"#,
        )
    })
    .await;
    let second = RawServer::start(|_, _| json_ok(VERSION_BODY)).await;
    let client = client_for(vec![first.url(), second.url()]);

    // When a request fails with that status
    let err = client.version().await.unwrap_err();

    // Then Proxmox's answer is returned and the second endpoint was not asked
    assert_eq!(err.to_string(), "HTTP 500: cluster not ready - no quorum?");
    assert_eq!(second.requests().len(), 0);
    assert_eq!(client.current_url(), first.url());
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_not_a_failover() {
    // Given a first endpoint that takes the request and never answers
    let stalling = RawServer::start(|_, _| Reply::Stall).await;
    let other = RawServer::start(|_, _| json_ok(VERSION_BODY)).await;
    let mut cfg = config(vec![stalling.url(), other.url()]);
    cfg.timeout = Duration::from_millis(300);
    let client = PveClient::new(&cfg).unwrap();

    // When a node status is asked (pveproxy may hold it up to 30 s for a down node)
    let err = client.node_status("pve2").await.unwrap_err();

    // Then it times out on that endpoint, without moving to the other one
    assert!(
        matches!(&err, PveError::Timeout { url } if *url == stalling.url()),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(other.requests().len(), 0);
    assert_eq!(
        stalling.requests().len(),
        1,
        "a timed-out GET is not resent"
    );
}

/// URLs are checked once, by [`ProxmoxUrl`] in the config; the client only derives the
/// API base from what passed.
#[test]
fn configured_urls_are_normalised_and_validated() {
    let url = |text: &str| ProxmoxUrl::parse(text);
    let endpoint = parse_endpoint(&url("https://pve.lan:8006/").unwrap()).unwrap();
    assert_eq!(endpoint.display, "https://pve.lan:8006");
    assert_eq!(endpoint.api_base.as_str(), "https://pve.lan:8006/api2/json");
    let pasted = url("https://pve.lan:8006/api2/json/").unwrap_err();
    assert!(pasted.contains("adds /api2/json itself"), "{pasted}");

    for bad in [
        "pve.lan:8006",
        "ftp://pve.lan",
        "not a url",
        "https://gw.lan/pve",
    ] {
        assert!(url(bad).is_err(), "{bad}");
    }
    let Err(err) = url("https://root:hunter2@pve.lan:8006") else {
        panic!("credentials in the URL were accepted");
    };
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn the_client_debug_output_shows_the_token_id_but_never_the_secret() {
    let client = client_for(vec!["https://pve.lan:8006".into()]);
    let shown = format!("{client:?}");
    assert!(shown.contains("pve2mqtt@pve!bridge"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn construction_rejects_settings_that_cannot_work() {
    let err = PveClient::new(&config(vec![])).unwrap_err();
    assert!(matches!(err, PveError::Config { .. }));
    let mut bad_token = config(vec!["https://pve.lan:8006".into()]);
    bad_token.token.secret = Secret::new(format!("{SECRET}\n"));
    let err = PveClient::new(&bad_token).unwrap_err();
    assert!(err.to_string().contains("pve2mqtt@pve!bridge"), "{err}");
    assert_no_secret(&err);
}

/// TLS: certificates from rcgen, served by axum-server over rustls (ring).
mod tls {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use axum_server::tls_rustls::RustlsConfig;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use sha2::{Digest, Sha256};
    use std::io::Write;

    struct TlsServer {
        url: String,
        handle: axum_server::Handle,
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            self.handle.shutdown();
        }
    }

    /// Serves `/api2/json/version` over TLS with the given chain and key.
    async fn serve(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().route(
            "/api2/json/version",
            get(|| async {
                (
                    [("content-type", "application/json;charset=UTF-8")],
                    VERSION_BODY,
                )
            }),
        );
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            RustlsConfig::from_config(Arc::new(server_config)),
        )
        .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        TlsServer {
            url: format!("https://localhost:{port}"),
            handle,
        }
    }

    /// A Proxmox-like setup: a cluster CA and a node certificate for localhost signed by it.
    struct Pki {
        ca_pem: String,
        leaf: CertificateDer<'static>,
        leaf_key: PrivateKeyDer<'static>,
    }

    fn cluster_pki() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Proxmox Virtual Environment");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            leaf: leaf.der().clone(),
            leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        }
    }

    /// A self-signed certificate for a name the client will not use.
    fn self_signed_for_another_host() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["pve-node-7.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    #[tokio::test]
    async fn a_certificate_signed_by_the_ca_file_is_accepted() {
        let pki = cluster_pki();
        let server = serve(vec![pki.leaf.clone()], pki.leaf_key.clone_key()).await;
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        ca_file.write_all(pki.ca_pem.as_bytes()).unwrap();
        let mut cfg = config(vec![server.url.clone()]);
        cfg.ca_file =
            Some(crate::types::CaBundle::read("proxmox.ca_file", ca_file.path()).unwrap());

        let version = PveClient::new(&cfg).unwrap().version().await.unwrap();
        assert_eq!(version.release.as_deref(), Some("9.1"));
    }

    #[tokio::test]
    async fn the_same_certificate_without_the_ca_file_is_rejected() {
        let pki = cluster_pki();
        let server = serve(vec![pki.leaf.clone()], pki.leaf_key.clone_key()).await;
        let err = client_for(vec![server.url.clone()])
            .version()
            .await
            .unwrap_err();
        let PveError::Transport { url, message } = &err else {
            panic!("expected Transport, got {err:?}");
        };
        assert_eq!(url, &server.url);
        assert!(message.contains("UnknownIssuer"), "{message}");
        assert!(
            message.contains("ca_file"),
            "the message says how to fix it: {message}"
        );
        assert_no_secret(&err);
    }

    #[tokio::test]
    async fn a_matching_fingerprint_is_accepted_whatever_the_ca_and_hostname() {
        let (cert, key) = self_signed_for_another_host();
        let fingerprint: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        let server = serve(vec![cert], key).await;
        let mut cfg = config(vec![server.url.clone()]);
        cfg.fingerprint = Some(fingerprint);

        let version = PveClient::new(&cfg).unwrap().version().await.unwrap();
        assert_eq!(version.version.as_deref(), Some("9.1.2"));
    }

    #[tokio::test]
    async fn a_wrong_fingerprint_is_rejected_naming_the_presented_one() {
        let (cert, key) = self_signed_for_another_host();
        let presented = crate::pve::tls::format_fingerprint(&Sha256::digest(cert.as_ref()));
        let server = serve(vec![cert], key).await;
        let mut cfg = config(vec![server.url.clone()]);
        cfg.fingerprint = Some([0xAB; 32]);

        let err = PveClient::new(&cfg).unwrap().version().await.unwrap_err();
        let PveError::Transport { message, .. } = &err else {
            panic!("expected Transport, got {err:?}");
        };
        assert!(message.contains(&presented), "{message}");
        assert!(
            message.contains("does not match the configured fingerprint"),
            "{message}"
        );
        assert_no_secret(&err);
    }

    #[tokio::test]
    async fn a_wrong_fingerprint_does_not_pass_as_tls_verify_false() {
        // The pin wins over tls_verify = false: an explicit pin must never be loosened.
        let (cert, key) = self_signed_for_another_host();
        let server = serve(vec![cert], key).await;
        let mut cfg = config(vec![server.url.clone()]);
        cfg.fingerprint = Some([0xAB; 32]);
        cfg.tls_verify = false;
        assert!(PveClient::new(&cfg).unwrap().version().await.is_err());
    }

    #[tokio::test]
    async fn tls_verify_false_accepts_any_certificate() {
        let (cert, key) = self_signed_for_another_host();
        let server = serve(vec![cert], key).await;
        let mut cfg = config(vec![server.url.clone()]);
        cfg.tls_verify = false;
        assert!(PveClient::new(&cfg).unwrap().version().await.is_ok());
    }

    #[tokio::test]
    async fn a_certificate_failure_on_the_first_endpoint_fails_over() {
        // Given a first endpoint with an untrusted certificate and a trusted second one
        let (cert, key) = self_signed_for_another_host();
        let untrusted = serve(vec![cert], key).await;
        let pki = cluster_pki();
        let trusted = serve(vec![pki.leaf.clone()], pki.leaf_key.clone_key()).await;
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        ca_file.write_all(pki.ca_pem.as_bytes()).unwrap();
        let mut cfg = config(vec![untrusted.url.clone(), trusted.url.clone()]);
        cfg.ca_file =
            Some(crate::types::CaBundle::read("proxmox.ca_file", ca_file.path()).unwrap());

        // When a request is made, then the TLS failure moves the client to the second
        let client = PveClient::new(&cfg).unwrap();
        client.version().await.unwrap();
        assert_eq!(client.current_url(), trusted.url);
    }
}

#[test]
fn the_client_and_its_futures_can_cross_tasks() {
    // The poller, the command handler and the task watcher share one client and spawn its
    // calls: the client must be Send + Sync + Clone and every call future Send.
    fn shareable<T: Send + Sync + Clone>(_: &T) {}
    fn spawnable<F: std::future::Future + Send>(_: F) {}
    let client = client_for(vec!["https://pve.lan:8006".into()]);
    shareable(&client);
    let upid: Upid = "UPID:pve:000A1B2C:00821A34:6803E819:qmstart:100:root@pam:"
        .parse()
        .unwrap();
    spawnable(client.version());
    spawnable(client.cluster_resources());
    spawnable(client.storage_content("pve", "local", Some("backup")));
    spawnable(client.guest_action("pve", GuestKind::Qemu, 100, "start", &[]));
    spawnable(client.vzdump("pve", &[]));
    spawnable(client.task_status(&upid));
    spawnable(client.task_log(&upid, 0, 0));
}

/// Every recorded `/cluster/resources` answer, streamed row by row, gives exactly the
/// rows the whole-list decoder gives, in order.
#[test]
fn streamed_rows_are_the_rows_of_the_whole_list() {
    for body in [
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pve/cluster_resources.1node-lxc-qemu-storage-sdn.json"
        )),
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pve/cluster_resources.4node-qemu-node-storage.json"
        )),
    ] {
        let whole = decode_cluster_resources(body.as_bytes()).unwrap();
        let mut streamed = Vec::new();
        let count = for_each_cluster_resource(body.as_bytes(), |row| streamed.push(row)).unwrap();
        assert!(!whole.is_empty());
        assert_eq!(count, whole.len());
        assert_eq!(streamed, whole);
    }
}

#[test]
fn streamed_rows_tolerate_keys_beside_data_in_any_order() {
    let body = br#"{"total":2,"data":[{"id":"qemu/100","type":"qemu","vmid":"100","node":"pve"},{"id":"node/pve","type":"node","node":"pve"}],"success":1}"#;
    let mut ids = Vec::new();
    let count = for_each_cluster_resource(body, |row| ids.push((row.kind, row.vmid))).unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        ids,
        [(ResourceKind::Qemu, Some(100)), (ResourceKind::Node, None)]
    );

    // serde's sequence form of the envelope, which the whole-list decoder accepts too
    // (found by tests/fuzz.rs).
    let seq_form = br#"[[{"id":"lxc/101","type":"lxc","vmid":101}]]"#;
    let mut rows = Vec::new();
    for_each_cluster_resource(seq_form, |row| rows.push(row)).unwrap();
    assert_eq!(rows, decode_cluster_resources(seq_form).unwrap());
}

/// A malformed answer gives the same error as the whole-list decoder (endpoint and JSON
/// path), whether the fault is in a row, around the list, or after it.
#[test]
fn a_malformed_answer_streamed_names_the_endpoint_and_the_field() {
    let bad_row = br#"{"data":[{"id":"qemu/100","type":"qemu","vmid":"100"},{"id":"qemu/101","type":"qemu","vmid":"x"}]}"#;
    let mut seen = 0;
    let err = for_each_cluster_resource(bad_row, |_| seen += 1).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("GET /cluster/resources"), "{text}");
    assert!(text.contains("data[1].vmid"), "{text}");
    assert_eq!(
        text,
        decode_cluster_resources(bad_row).unwrap_err().to_string()
    );

    for body in [
        &br#"{"total":0}"#[..],
        br#"{"data":{"id":"qemu/100"}}"#,
        br#"{"data":[]} trailing"#,
        br#"{"data":[],"data":[]}"#,
        br#"[[],[]]"#,
        b"\xff\xfe",
    ] {
        let err = for_each_cluster_resource(body, |_| {}).unwrap_err();
        assert!(
            matches!(err, PveError::Decode { .. }),
            "{:?}: {err}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn a_large_answer_arrives_whole_with_or_without_a_content_length() {
    // Given a 5,000-row answer, sent once with Content-Length and once chunked (no length)
    let rows: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                r#"{{"id":"qemu/{v}","type":"qemu","vmid":{v},"node":"pve{n}","name":"vm-{v}","status":"running","uptime":{i}}}"#,
                v = 100 + i,
                n = i % 10
            )
        })
        .collect();
    let body = format!(r#"{{"data":[{}]}}"#, rows.join(","));
    let chunked = {
        let mut raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n\
                       Transfer-Encoding: chunked\r\nConnection: Keep-Alive\r\n\r\n"
            .to_string();
        for piece in body.as_bytes().chunks(7_000) {
            let piece = std::str::from_utf8(piece).expect("ASCII");
            raw.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
        }
        raw.push_str("0\r\n\r\n");
        raw
    };
    let (sized, chunks) = (body.clone(), chunked);
    let server = RawServer::start(move |_, number| {
        if number == 0 {
            json_ok(&sized)
        } else {
            Reply::Send {
                raw: chunks.clone(),
                close: false,
            }
        }
    })
    .await;
    let client = client_for(vec![server.url()]);

    // When the fast lane reads it both ways
    for _ in 0..2 {
        let read = client.cluster_resources_body().await.unwrap();

        // Then every byte arrived, in order, and the rows decode
        assert_eq!(read.len(), body.len());
        assert!(read == body.as_bytes());
        let mut count = 0;
        for_each_cluster_resource(&read, |_| count += 1).unwrap();
        assert_eq!(count, 5000);
    }
}
