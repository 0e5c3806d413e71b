//! Node power calls (reference `pve-api-round2.md` §10): `POST /nodes/{n}/status`,
//! the bulk `startall`/`stopall`/`suspendall`, `wakeonlan`, and the node rows of
//! `/cluster/status` with their `ip` and `local` flag (to tell which node is which).
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::decode::decode_data;
use super::{Call, PveClient};
use crate::pve::de;
use crate::pve::error::PveError;
use crate::pve::upid::{Upid, UpidParseError};

/// A node row of `GET /cluster/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ClusterNodeRow {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub ip: Option<String>,
    /// The node that answered the request (the API endpoint in use).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub local: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub online: Option<bool>,
}

impl PveClient {
    async fn post_value(
        &self,
        segments: &[&str],
        form: &[(&str, String)],
    ) -> Result<(String, Value), PveError> {
        let call = Call {
            method: Method::POST,
            segments,
            query: &[],
            form: Some(form),
        };
        let body = self.execute(&call).await?;
        let value = decode_data(&call.label(), &body)?;
        Ok((call.label(), value))
    }

    /// `POST /nodes/{node}/status` with `command=reboot|shutdown`. Proxmox answers
    /// `{"data":null}` at once: there is no task. Never retried.
    pub async fn node_power(&self, node: &str, command: &str) -> Result<(), PveError> {
        self.post_value(
            &["nodes", node, "status"],
            &[("command", command.to_string())],
        )
        .await
        .map(|_| ())
    }

    /// `POST /nodes/{node}/{startall|stopall|suspendall}`: the bulk task's UPID (its id
    /// is empty). Never retried.
    pub async fn node_bulk(
        &self,
        node: &str,
        action: &str,
        form: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        let (label, value) = self.post_value(&["nodes", node, action], form).await?;
        let text = value.as_str().unwrap_or_default();
        text.parse().map_err(|e: UpidParseError| PveError::Decode {
            endpoint: label,
            message: e.to_string(),
        })
    }

    /// `POST /nodes/{node}/wakeonlan`: runs on the node the request reaches (no
    /// proxying) and sends the magic packet for `{node}`; answers the MAC it used.
    pub async fn wake_on_lan(&self, node: &str) -> Result<String, PveError> {
        let (_, value) = self.post_value(&["nodes", node, "wakeonlan"], &[]).await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// The node rows of `GET /cluster/status`.
    pub async fn cluster_nodes(&self) -> Result<Vec<ClusterNodeRow>, PveError> {
        let rows: Vec<ClusterNodeRow> = self.get_data(&Call::get(&["cluster", "status"])).await?;
        Ok(rows.into_iter().filter(|r| r.kind == "node").collect())
    }

    /// The host of the endpoint in use (`pve1.lan`, `192.0.2.10`), and its port.
    pub fn current_host(&self) -> Option<(String, u16)> {
        let url = reqwest::Url::parse(&self.current_url()).ok()?;
        let host = url.host_str()?.trim_matches(['[', ']']).to_string();
        Some((host, url.port_or_known_default().unwrap_or(8006)))
    }
}
