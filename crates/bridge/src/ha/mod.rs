//! Home Assistant vocabulary: topics, discovery payloads. Pure, no I/O.
//!
//! Conventions (SPEC §3, §5): everything about state is retained; discovery is
//! device-based, one retained message per object; every entity's availability is the
//! list [bridge state, object availability] in mode `all`; unique ids are
//! `pve2mqtt_{c}_{vmid}_{key}`, `pve2mqtt_{c}_node_{node}_{key}`, … and never contain
//! guest names, so they survive renames and migrations.
pub mod discovery;
pub mod topics;
