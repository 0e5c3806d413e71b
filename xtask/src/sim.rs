//! The simulator (`pve2mqtt sim`) as a separate process, and its control API (`/_sim/…`,
//! plain JSON over its self-signed HTTPS).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use crate::procs;
use testkit::ChildProcess;

/// The API token the simulator accepts and the bridge's config names.
pub const TOKEN: &str = "root@pam!pve2mqtt=5ec12e7a-0000-4000-8000-000000000001";

pub struct Simulator {
    pub base: String,
    pub fingerprint: String,
    http: reqwest::Client,
    child: std::sync::Mutex<Option<Child>>,
}

impl Simulator {
    /// Starts `binary sim --listen 127.0.0.1:<free> --tls --token … <extra>` and waits for
    /// the certificate fingerprint it prints; its output goes to `log`.
    pub fn start(binary: &Path, extra: &[String], log: &Path) -> anyhow::Result<Simulator> {
        let port = procs::free_port();
        let mut log = File::create(log)?;
        let mut child = Command::new(binary)
            .args([
                "sim",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--tls",
                "--token",
                TOKEN,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {} sim", binary.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut fingerprint = None;
        let mut line = String::new();
        while lines.read_line(&mut line)? > 0 {
            log.write_all(line.as_bytes())?;
            if let Some(value) = line.trim().strip_prefix("fingerprint:") {
                fingerprint = Some(value.trim().to_string());
                break;
            }
            line.clear();
        }
        let Some(fingerprint) = fingerprint else {
            let _ = child.kill();
            bail!("the simulator printed no certificate fingerprint");
        };
        // Keep draining its stdout, so a chatty simulator never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut lines, &mut log);
        });
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Simulator {
            base: format!("https://127.0.0.1:{port}"),
            fingerprint,
            http,
            child: std::sync::Mutex::new(Some(child)),
        })
    }

    /// A control call; the JSON answer (`Null` for an empty one), or an error naming the
    /// status and body when the simulator refused.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("sim {method} {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("sim {method} {path}: {status} {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    pub async fn stop(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut child) = child {
            procs::terminate(&mut child, Duration::from_secs(10)).await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill_now();
        }
    }
}
