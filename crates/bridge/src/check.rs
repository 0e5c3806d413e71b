//! `pve2mqtt check`: validates the config (already done by the caller), reaches every
//! Proxmox endpoint and the broker, and prints a short report a user can paste into a
//! bug report. Secrets are never printed. Any failure ends it with a one-line reason.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{Event, Incoming};

use crate::app::FatalConfigError;
use crate::config::Config;
use crate::pve::{Permissions, PveClient, PveError};
use crate::types::ProxmoxUrl;

mod health;

/// A privilege the bridge uses, where it must hold, and what needs it.
struct Need {
    path: &'static str,
    privilege: &'static str,
    purpose: &'static str,
}

const READ_NEEDS: &[Need] = &[
    Need {
        path: "/",
        privilege: "Sys.Audit",
        purpose: "cluster and node status",
    },
    Need {
        path: "/vms",
        privilege: "VM.Audit",
        purpose: "guest state",
    },
    Need {
        path: "/storage",
        privilege: "Datastore.Audit",
        purpose: "storage state and backups",
    },
];
/// `/cluster/tasks` shows an API token no row without it (reference round 2 §14), and
/// `/cluster/backup-info/not-backed-up` answers 403.
const TASK_NEEDS: &[Need] = &[Need {
    path: "/",
    privilege: "Sys.Audit",
    purpose: "tasks of any origin, backup verdicts and coverage",
}];
const CONTROL_NEEDS: &[Need] = &[Need {
    path: "/vms",
    privilege: "VM.PowerMgmt",
    purpose: "start/stop/… commands",
}];
/// Node power (reference pve-api-round2.md §10): `Sys.PowerMgmt` on the node for
/// reboot/shutdown/wakeonlan; the bulk actions without `vms` need `VM.PowerMgmt` on `/`
/// (suspendall also `VM.Config.Disk`).
const NODE_POWER_NEEDS: &[Need] = &[
    Need {
        path: "/nodes",
        privilege: "Sys.PowerMgmt",
        purpose: "node reboot/shutdown/wakeonlan",
    },
    Need {
        path: "/",
        privilege: "VM.PowerMgmt",
        purpose: "startall/stopall/suspendall of every guest",
    },
    Need {
        path: "/",
        privilege: "VM.Config.Disk",
        purpose: "suspendall of every guest",
    },
];
const BACKUP_NEEDS: &[Need] = &[
    Need {
        path: "/vms",
        privilege: "VM.Backup",
        purpose: "backups",
    },
    Need {
        path: "/storage",
        privilege: "Datastore.AllocateSpace",
        purpose: "writing backups",
    },
];

const SNAPSHOT_NEEDS: &[Need] = &[Need {
    path: "/vms",
    privilege: "VM.Snapshot",
    purpose: "snapshot and delete_snapshot commands",
}];

/// The `snapshots` line, and with `[commands] rollback = true` the `rollback` line.
/// Proxmox lets a rollback through with either `VM.Snapshot` or `VM.Snapshot.Rollback`.
fn snapshot_lines(perms: &Permissions, rollback: bool, note: &str) -> Vec<String> {
    let snapshot = missing(perms, SNAPSHOT_NEEDS);
    let mut lines = vec![if snapshot.is_empty() {
        format!("snapshots: yes{note}")
    } else {
        format!("snapshots: no — missing {}{note}", describe(&snapshot))
    }];
    if rollback {
        let may = perms.has("/vms", "VM.Snapshot.Rollback") || perms.has("/vms", "VM.Snapshot");
        lines.push(if may {
            format!("rollback: yes{note}")
        } else {
            format!("rollback: no — missing VM.Snapshot.Rollback on /vms (rollback command){note}")
        });
    }
    lines
}

fn missing<'a>(perms: &Permissions, needs: &'a [Need]) -> Vec<&'a Need> {
    needs
        .iter()
        .filter(|n| !perms.has(n.path, n.privilege))
        .collect()
}

fn describe(needs: &[&Need]) -> String {
    needs
        .iter()
        .map(|n| format!("{} on {} ({})", n.privilege, n.path, n.purpose))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `node power:` line: whether the token may do node power, when the switch is on.
fn node_power_line(config: &Config, perms: &Permissions) -> String {
    if !crate::command::node::node_power_possible(&config.commands) {
        return "node power: off in the config ([commands] node_power = false)".into();
    }
    let lacking = missing(perms, NODE_POWER_NEEDS);
    if lacking.is_empty() {
        "node power: yes".into()
    } else {
        format!("node power: no — missing {}", describe(&lacking))
    }
}

pub async fn run(config: &Config) -> anyhow::Result<()> {
    println!("pve2mqtt {} check", env!("CARGO_PKG_VERSION"));
    println!("config: ok");
    for line in config_summary(config).lines() {
        println!("  {line}");
    }
    let mut failures = Vec::new();
    for (i, cluster) in config.clusters.iter().enumerate() {
        let label = cluster
            .name
            .clone()
            .unwrap_or_else(|| format!("proxmox[{i}]"));
        let client =
            PveClient::new(cluster).map_err(|e| FatalConfigError(format!("{label}: {e}")))?;
        let version = match client.version().await {
            Ok(v) => v,
            Err(err @ PveError::Unauthorized { .. }) => {
                return Err(FatalConfigError(format!(
                    "{label}: Proxmox rejected the API token {}: {err}",
                    cluster.token.id()
                ))
                .into())
            }
            Err(err) => {
                println!(
                    "proxmox {label}: UNREACHABLE at {}: {err}",
                    client.current_url()
                );
                failures.push(format!("{label}: Proxmox unreachable: {err}"));
                continue;
            }
        };
        println!(
            "proxmox {label}: ok, {} — Proxmox VE {} (release {}), token {}",
            client.current_url(),
            version.version.as_deref().unwrap_or("?"),
            version.release.as_deref().unwrap_or("?"),
            cluster.token.id()
        );
        match client.permissions().await {
            Ok(perms) => {
                let read = missing(&perms, READ_NEEDS);
                if read.is_empty() {
                    println!("  read state: yes");
                } else {
                    println!("  read state: NO — missing {}", describe(&read));
                    failures.push(format!("{label}: the token lacks {}", describe(&read)));
                }
                let control = missing(&perms, CONTROL_NEEDS);
                let backup = missing(&perms, BACKUP_NEEDS);
                let note = if config.commands.enabled && !config.commands.read_only {
                    ""
                } else {
                    " (commands are off in the config)"
                };
                if control.is_empty() {
                    println!("  power control: yes{note}");
                } else {
                    println!("  power control: no — missing {}{note}", describe(&control));
                }
                println!("  {}", node_power_line(config, &perms));
                if backup.is_empty() {
                    println!("  backups: yes{note}");
                } else {
                    println!("  backups: no — missing {}{note}", describe(&backup));
                }
                let tasks = missing(&perms, TASK_NEEDS);
                if tasks.is_empty() {
                    println!("  tasks of any origin, backup health: yes");
                } else {
                    println!(
                        "  tasks of any origin, backup health: no — missing {} (last_task, failed tasks and backup verdicts stay empty)",
                        describe(&tasks)
                    );
                }
                for line in health::lines(&perms, &config.poll) {
                    println!("  {line}");
                }
                for line in snapshot_lines(&perms, config.commands.rollback, note) {
                    println!("  {line}");
                }
                println!("  {}", agent_line(&perms, version.version.as_deref()));
            }
            Err(err) => {
                println!("  privileges: cannot read /access/permissions: {err}");
                failures.push(format!(
                    "{label}: cannot read the token's privileges: {err}"
                ));
            }
        }
        // Cluster health: asked for real, since "absent" and "not permitted" are answers.
        for line in crate::poller::cluster_health_check(&client).await {
            println!("  {line}");
        }
    }
    // Every member of `mqtt.urls` is tried, so a dead one is seen before the day it is needed;
    // the bridge works while one answers, so only "none answers" fails the check.
    let mut broker_failures = Vec::new();
    for broker in &config.mqtt.brokers {
        match check_broker(config, broker).await {
            Ok(()) => println!("mqtt: ok, connected to {}", broker.url),
            Err(err) => {
                println!("mqtt: FAILED to connect to {}: {err:#}", broker.url);
                broker_failures.push(format!("MQTT broker {}: {err:#}", broker.url));
            }
        }
    }
    if broker_failures.len() == config.mqtt.brokers.len() {
        failures.extend(broker_failures);
    } else if !broker_failures.is_empty() {
        println!(
            "mqtt: warning: {} of {} brokers unreachable; the bridge uses the others",
            broker_failures.len(),
            config.mqtt.brokers.len()
        );
    }
    if let Some(first) = failures.first() {
        bail!("{first}");
    }
    println!("result: ok");
    Ok(())
}

/// Connects with a separate client id and no Last Will, waits for the ConnAck, and
/// disconnects: proves address, TLS and credentials without touching the bridge state.
async fn check_broker(config: &Config, broker: &crate::config::MqttBroker) -> anyhow::Result<()> {
    let client_id = format!("{}-check", config.mqtt.client_id);
    let opts = crate::mqtt::broker_options(&config.mqtt, broker, &client_id)?;
    let (client, mut eventloop) = crate::mqtt::client(opts, 10);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(anyhow::Error::new(err)),
            }
        }
    })
    .await
    .context("no answer within 5 s")?;
    connected?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}

/// A short multi-line summary for `pve2mqtt check`: everything an admin wants to confirm,
/// and nothing secret (token id but not its secret; whether a password is set, not what).
pub fn config_summary(config: &Config) -> String {
    let mut out = String::new();
    for (index, cluster) in config.clusters.iter().enumerate() {
        let name = cluster
            .name
            .as_deref()
            .map(str::to_owned)
            .unwrap_or_else(|| "from Proxmox".into());
        let _ = writeln!(out, "proxmox cluster {} (id: {name})", index + 1);
        let _ = writeln!(
            out,
            "  urls: {}",
            cluster
                .urls
                .iter()
                .map(ProxmoxUrl::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(out, "  token: {} (secret hidden)", cluster.token.id());
        let mut tls = Vec::new();
        if let Some(fingerprint) = &cluster.fingerprint {
            tls.push(format!(
                "pinned certificate SHA-256 {}",
                crate::types::format_fingerprint(fingerprint)
            ));
        }
        if let Some(ca_file) = &cluster.ca_file {
            tls.push(format!("CA file {}", ca_file.display()));
        }
        if !cluster.tls_verify {
            tls.push("certificate verification OFF (tls_verify = false)".into());
        }
        if tls.is_empty() {
            tls.push("verified against the system trust roots".into());
        }
        let _ = writeln!(out, "  tls: {}", tls.join("; "));
        let _ = writeln!(
            out,
            "  timeout: {}",
            humantime::format_duration(cluster.timeout)
        );
    }
    let _ = writeln!(
        out,
        "poll: every {}, slow lane every {}",
        humantime::format_duration(config.poll.interval),
        humantime::format_duration(config.poll.slow_interval)
    );
    let mqtt = &config.mqtt;
    for (index, broker) in mqtt.brokers.iter().enumerate() {
        let _ = writeln!(
            out,
            "{} {} (host {}, port {}, {})",
            if index == 0 { "mqtt:" } else { "   or" },
            broker.url,
            broker.host,
            broker.port,
            if broker.tls { "TLS" } else { "no TLS" }
        );
    }
    let _ = writeln!(
        out,
        "  user: {}, password: {}, client id: {}",
        mqtt.username.as_deref().unwrap_or("(none)"),
        if mqtt.password.is_some() {
            "set"
        } else {
            "(none)"
        },
        mqtt.client_id
    );
    if let Some(ca_file) = &mqtt.ca_file {
        let _ = writeln!(out, "  CA file: {}", ca_file.display());
    }
    let _ = writeln!(out, "  base topic: {}", mqtt.base_topic);
    let ha = &config.homeassistant;
    let _ = writeln!(
        out,
        "homeassistant: discovery {}, prefix {}",
        if ha.discovery { "on" } else { "off" },
        ha.discovery_prefix
    );
    let commands = &config.commands;
    let policy = if !commands.enabled {
        "disabled".to_owned()
    } else if commands.read_only {
        "read-only (every command is rejected)".to_owned()
    } else if commands.allow.is_empty() {
        "allowed for every guest".to_owned()
    } else {
        let rules: Vec<String> = commands.allow.iter().map(ToString::to_string).collect();
        format!("allowed for {}", rules.join(", "))
    };
    let _ = writeln!(out, "commands: {policy}");
    let backup = &config.backup;
    let _ = write!(
        out,
        "backup defaults: storage {}, mode {}, compress {}",
        backup.storage, backup.mode, backup.compress
    );
    out
}

#[cfg(test)]
mod snapshot_check_tests {
    use super::*;

    fn perms(privileges: &[&str]) -> Permissions {
        let privs = privileges.iter().map(|p| (p.to_string(), true)).collect();
        Permissions([("/vms".to_string(), privs)].into_iter().collect())
    }

    #[test]
    fn check_names_vm_snapshot_and_with_rollback_on_vm_snapshot_rollback() {
        let lines = snapshot_lines(&perms(&["VM.Audit"]), false, "");
        assert_eq!(lines.len(), 1, "no rollback line while rollback is off");
        assert!(lines[0].contains("snapshots: no — missing VM.Snapshot on /vms"));
        let lines = snapshot_lines(&perms(&["VM.Audit"]), true, "");
        assert!(lines[1].contains("rollback: no — missing VM.Snapshot.Rollback"));
        let lines = snapshot_lines(&perms(&["VM.Snapshot.Rollback"]), true, "");
        assert_eq!(lines[1], "rollback: yes");
        let lines = snapshot_lines(&perms(&["VM.Snapshot"]), true, "");
        assert_eq!(lines, ["snapshots: yes", "rollback: yes"]);
    }
}

/// The guest-agent privilege: `VM.GuestAgent.Audit` (or `…Unrestricted`) since PVE 9,
/// `VM.Monitor` before (qemu-server changed the check in 9.0). Without it the bridge
/// skips agent data quietly, so this is a note, not a failure.
fn agent_line(perms: &Permissions, version: Option<&str>) -> String {
    let major: u32 = version
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(9);
    let (wanted, other, label) = if major >= 9 {
        (
            &["VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted"][..],
            "VM.Monitor on PVE 8",
            "PVE 9",
        )
    } else {
        (&["VM.Monitor"][..], "VM.GuestAgent.Audit on PVE 9", "PVE 8")
    };
    match wanted.iter().find(|p| perms.has("/vms", p)) {
        Some(held) => format!("guest agent: yes ({held} on /vms, as {label} asks)"),
        None => format!(
            "guest agent: no — missing {} on /vms ({label} asks it; {other}): addresses, OS and VM disk used are skipped",
            wanted[0]
        ),
    }
}

#[cfg(test)]
mod agent_line_tests {
    use super::*;

    fn perms(privileges: &[&str]) -> Permissions {
        let map: serde_json::Value = serde_json::json!({
            "/vms": privileges.iter().map(|p| (p.to_string(), serde_json::Value::from(1))).collect::<serde_json::Map<_, _>>()
        });
        serde_json::from_value(map).unwrap()
    }

    #[test]
    fn the_agent_privilege_follows_the_release() {
        let pve9 = perms(&["VM.Audit", "VM.GuestAgent.Audit"]);
        assert!(
            agent_line(&pve9, Some("9.1.5")).starts_with("guest agent: yes (VM.GuestAgent.Audit")
        );
        assert!(
            agent_line(&pve9, Some("8.4.1")).starts_with("guest agent: no — missing VM.Monitor")
        );
        let pve8 = perms(&["VM.Audit", "VM.Monitor"]);
        assert!(agent_line(&pve8, Some("8.4.1")).starts_with("guest agent: yes (VM.Monitor"));
        assert!(agent_line(&pve8, Some("9.0.3"))
            .starts_with("guest agent: no — missing VM.GuestAgent.Audit on /vms (PVE 9 asks it; VM.Monitor on PVE 8)"));
    }
}
