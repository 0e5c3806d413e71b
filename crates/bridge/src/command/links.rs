//! What the command side talks to: the clusters (through the [`Registry`] the pollers
//! fill in) and the publisher (through [`Reporter`], with typed messages: the publisher
//! builds every topic).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::report::TaskReport;
use crate::model::ClusterView;
use crate::poller::Refresh;
use crate::publisher::PublisherMsg;
use crate::pve::{GuestKind, PveClient};

/// What the command side knows of one cluster.
#[derive(Clone)]
pub struct ClusterHandle {
    pub client: PveClient,
    /// The poller's latest view.
    pub view: watch::Receiver<Option<Arc<ClusterView>>>,
    pub refresh: mpsc::Sender<Refresh>,
}

/// Clusters by id, filled in by the pollers once they know their cluster's id.
pub type Registry = Arc<RwLock<HashMap<String, ClusterHandle>>>;

/// The cluster's handle, if its poller has registered it.
pub fn cluster(registry: &Registry, id: &str) -> Option<ClusterHandle> {
    registry
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
}

/// Sends reports and responses to the publisher. A closed publisher means shutdown is
/// past the point where anything could still be published, so sends do not fail.
#[derive(Clone)]
pub struct Reporter(pub mpsc::Sender<PublisherMsg>);

impl Reporter {
    /// The guest's retained `…/task` report.
    pub async fn task(&self, cluster: &str, kind: GuestKind, vmid: u32, report: &TaskReport) {
        let _ = self
            .0
            .send(PublisherMsg::Task {
                cluster: cluster.to_string(),
                kind,
                vmid,
                report: report.clone(),
            })
            .await;
    }

    /// A report for live subscribers of the guest's `…/task` only, neither retained nor
    /// remembered: a rejection that must not replace the latest real command's report.
    pub async fn notice(&self, cluster: &str, kind: GuestKind, vmid: u32, report: &TaskReport) {
        let _ = self
            .0
            .send(PublisherMsg::TaskNotice {
                cluster: cluster.to_string(),
                kind,
                vmid,
                report: report.clone(),
            })
            .await;
    }

    /// Clears a bridge request on the broker, so a retained copy is not delivered again.
    pub async fn clear_request(&self, name: &str) {
        let _ = self
            .0
            .send(PublisherMsg::ClearRequest {
                name: name.to_string(),
            })
            .await;
    }

    /// Clears a retained command on the broker, so it is not delivered again.
    pub async fn clear_command(&self, cluster: &str, kind: GuestKind, vmid: u32) {
        let _ = self
            .0
            .send(PublisherMsg::ClearCommand {
                cluster: cluster.to_string(),
                kind,
                vmid,
            })
            .await;
    }

    /// A response that carries data and, when some part failed, the error too (a node
    /// backup where one guest failed: every guest's result, and which failed).
    pub async fn respond_with(
        &self,
        name: &str,
        transaction: Option<Value>,
        data: Value,
        error: Option<String>,
    ) {
        let status = if error.is_none() { "ok" } else { "error" };
        let body =
            json!({"status": status, "data": data, "error": error, "transaction": transaction});
        let _ = self
            .0
            .send(PublisherMsg::Response {
                name: name.to_string(),
                body,
            })
            .await;
    }

    /// `{base}/bridge/response/{name}`, echoing the request's `transaction`.
    pub async fn respond(
        &self,
        name: &str,
        transaction: Option<Value>,
        result: Result<Value, String>,
    ) {
        let body = response_body(transaction, result);
        let _ = self
            .0
            .send(PublisherMsg::Response {
                name: name.to_string(),
                body,
            })
            .await;
    }
}

/// The JSON of a `bridge/response/…`: `{"status","data","error","transaction"}`.
pub fn response_body(transaction: Option<Value>, result: Result<Value, String>) -> Value {
    match result {
        Ok(data) => {
            json!({"status": "ok", "data": data, "error": null, "transaction": transaction})
        }
        Err(error) => {
            json!({"status": "error", "data": null, "error": error, "transaction": transaction})
        }
    }
}
