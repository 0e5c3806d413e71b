//! Commands: MQTT `…/set` and `bridge/request/…` → Proxmox lifecycle POSTs and vzdump
//! backups, each followed to its end (SPEC §4).
//!
//! Path B: the MQTT event loop routes command-side messages straight here (never through
//! the publisher, whose work on a big view would delay them) → [`handler`] parses
//! ([`parse`]), authorises ([`policy`]), marks the guest busy, POSTs to the node the
//! guest is on now, follows the task, asks the poller for an immediate refresh, and
//! reports every step on the guest's retained `…/task` topic ([`report`]) through the
//! publisher.
pub mod handler;
pub mod parse;
pub mod policy;
pub mod ratelimit;
pub mod report;

pub use handler::{ClusterHandle, CommandHandler, Refresh, Registry};
