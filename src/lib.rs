//! pve2mqtt: a Proxmox VE cluster on MQTT, with Home Assistant discovery.
//!
//! Module map (one module per boundary):
//! - [`config`]: the TOML + environment configuration (SPEC §2), validated once.
//! - [`pve`]: the Proxmox VE HTTP boundary (client, tolerant types, errors). Knows nothing of MQTT.
//! - [`sim`]: the built-in Proxmox VE simulator (`pve2mqtt sim`), feature `sim`.
pub mod config;
pub mod pve;
#[cfg(feature = "sim")]
pub mod sim;
