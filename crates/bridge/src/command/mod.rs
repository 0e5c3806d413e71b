//! Commands: MQTT `…/set` and `bridge/request/…` → Proxmox lifecycle POSTs and vzdump
//! backups, each followed to its end (SPEC §4).
//!
//! Path B: the MQTT event loop routes command-side messages straight here (never through
//! the publisher, whose work on a big view would delay them).
//! - [`inbox`] takes them one at a time: parses ([`parse`], [`requests`]), rate-limits
//!   ([`ratelimit`]), authorises ([`policy`]) and takes the guest's slot ([`busy`]).
//! - [`runner`]: one task per accepted job POSTs to the node the guest is on now, follows
//!   the task, asks the poller for an immediate refresh, and reports every step on the
//!   guest's retained `…/task` topic ([`report`]) through the publisher ([`links`]).
//! - [`resume`] follows tasks an earlier run started and did not see end;
//!   [`node_resume`] does so for node commands ([`node`], [`node_run`]).
pub mod busy;
pub mod inbox;
pub mod links;
pub mod node;
pub mod node_resume;
pub mod node_run;
pub mod parse;
pub mod policy;
pub mod ratelimit;
pub mod report;
pub mod requests;
pub mod resume;
pub mod runner;
pub mod snapshot;

pub use inbox::CommandHandler;
pub use links::{ClusterHandle, Registry};
pub use parse::{Rejection, RejectionKind};
pub use runner::RunError;
