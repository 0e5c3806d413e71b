//! The integration tests: one binary, real processes and sockets throughout — a real
//! Mosquitto per test, the simulator over HTTPS, the bridge in-process or as the real
//! binary. Assertions are on what an MQTT subscriber (Home Assistant, a script) actually
//! receives, and on the requests the simulator saw.

/// The guest agent: addresses, OS and disk used; who is asked, how often, back-off.
mod agent;
/// The real binary: Last Will on SIGKILL, clean SIGTERM, `check`, config errors.
mod binary;
/// The bridge's own HA device: Proxmox API state, the Refresh button, node connectivity.
mod bridge_device;
/// The broker matrix (Mosquitto with and without persistence, a NATS cluster, rumqttd,
/// RabbitMQ where present) and losing a broker node.
mod brokers;
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
/// Reporting rules: reportable changes, counters that ride along, `max_interval`.
mod reporting;
/// Retained input never runs; rejections that are not about a real command are not retained.
mod retained;
/// TLS to Proxmox and the broker, passwords, secrets kept out of logs and payloads.
mod security;
/// Discovery and state: what Home Assistant and scripts see after a poll.
mod state;
/// Broker, simulator, probe and bridge helpers.
mod support;
