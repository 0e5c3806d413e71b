//! pve2mqtt: a Proxmox VE cluster on MQTT, with Home Assistant discovery.
//!
//! Module map (one module per boundary):
//! - [`config`]: the TOML + environment configuration (SPEC §2), validated once.
//! - [`pve`]: the Proxmox VE HTTP boundary (client, tolerant types, errors). Knows nothing of MQTT.
//! - [`model`]: pure: `/cluster/resources` + slow-lane details → the state of every object.
//! - [`ha`]: pure: Home Assistant vocabulary (topics, discovery payloads).
//! - [`mqtt`]: the MQTT boundary (options, the one event-loop task). Knows nothing of Proxmox.
//! - [`publisher`]: the one task that publishes; owns what the broker has been told.
//! - [`poller`]: per cluster, the fast lane (one request per poll) and the slow lane.
//! - [`command`]: MQTT commands → Proxmox POSTs, each task followed to its end.
//! - [`app`]: wiring and ordered shutdown.
//! - [`memory`]: gives freed heap memory back to the system after each view.
//!
//! The simulator (`crates/pve-sim`) and the demo (`crates/demo`) are crates of their own
//! that this library does not depend on; the `pve2mqtt` binary (root package) joins them.
//!
//! Path A (state): poller → `model::build_view` → publisher → `ha::discovery` / state
//! JSON → MQTT, publishing only what changed.
//! Path B (commands): MQTT event loop (routes by topic) → `command::inbox` (parse,
//! policy, busy) → POST → follow the task → poller refresh → `…/task` result through
//! the publisher.
pub mod app;
pub mod check;
pub mod command;
pub mod config;
pub mod ha;
pub mod http;
pub mod logging;
pub mod memory;
pub mod model;
pub mod mqtt;
pub mod poller;
pub mod publisher;
pub mod pve;
pub mod signal;
pub mod types;
