//! The integration tests: one binary, real processes and sockets throughout — a real
//! Mosquitto per test, the simulator over HTTPS, the bridge in-process or as the real
//! binary. Assertions are on what an MQTT subscriber (Home Assistant, a script) actually
//! receives, and on the requests the simulator saw.

/// The guest agent: addresses, OS and disk used; who is asked, how often, back-off.
mod agent;
/// Backup health: per-guest verdicts from a job's log, coverage, stale backups.
mod backup_health;
/// The real binary: Last Will on SIGKILL, clean SIGTERM, `check`, config errors.
mod binary;
/// The bridge's own HA device: Proxmox API state, the Refresh button, node connectivity.
mod bridge_device;
/// The broker matrix (Mosquitto with and without persistence, a NATS cluster, rumqttd,
/// RabbitMQ where present) and losing a broker node.
mod brokers;
/// Cluster health (issue 11): Ceph, the HA manager, guest HA state and lock, replication.
mod cluster_health;
/// Commands: POSTs, task following, rejections, bridge requests.
mod commands;
/// Faults survived: broker restarts.
mod faults;
/// Field truth (issue 9): reconnects mid-burst, big retained junk, empty answers, floods.
mod field;
/// Exactly one final result per command: followers across restarts, partial backups,
/// unknown tasks, a stop during a POST.
mod followers;
/// The bridge's own HTTP listener: /healthz and /metrics; JSON logs.
mod health;
/// Node commands (issue 11): node power, bulk guest actions, Wake-on-LAN, safety rules.
mod node_commands;
/// Node health (issue 11): disks, ZFS pools, updates, reboot required, certificates.
mod node_health;
/// Reporting rules: reportable changes, counters that ride along, `max_interval`.
mod reporting;
/// Retained input never runs; rejections that are not about a real command are not retained.
mod retained;
/// TLS to Proxmox and the broker, passwords, secrets kept out of logs and payloads.
mod security;
/// Issue 12's smaller items: `keep_active` on VM shutdown, storage `avail` from Proxmox.
mod seed_items;
/// Snapshots: snapshot, rollback and delete_snapshot commands; count and newest in state.
mod snapshots;
/// Discovery and state: what Home Assistant and scripts see after a poll.
mod state;
/// Broker, simulator, probe and bridge helpers.
mod support;
/// Tasks of any origin: `/cluster/tasks`, `…/last_task`, failed tasks per node.
mod tasks;
