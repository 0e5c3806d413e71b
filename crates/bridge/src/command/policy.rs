//! The command policy (`[commands]`), enforced here and nowhere else.

use crate::config::{AllowRule, CommandsConfig};
use crate::ha::discovery::GuestControls;
use crate::model::GuestState;
use crate::pve::Action;

use super::parse::{Rejection, RejectionKind};

/// May a command reach Proxmox for this guest? `read_only` and `enabled = false` refuse
/// everything; a non-empty `allow` list admits a guest by vmid, tag or pool.
pub fn authorize(policy: &CommandsConfig, guest: &GuestState) -> Result<(), Rejection> {
    if !policy.enabled {
        return Err(Rejection::new(
            RejectionKind::Policy,
            "commands are disabled ([commands] enabled = false)",
        ));
    }
    if policy.read_only {
        return Err(Rejection::new(
            RejectionKind::Policy,
            "the bridge is read-only ([commands] read_only = true)",
        ));
    }
    if allowed(policy, guest) {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectionKind::Policy,
            format!("guest {} is not in [commands] allow", guest.vmid),
        ))
    }
}

/// May this action run at all? `rollback` needs `[commands] rollback = true`: it throws
/// away everything since the snapshot.
pub fn authorize_action(policy: &CommandsConfig, action: Action) -> Result<(), Rejection> {
    if action == Action::Rollback && !policy.rollback {
        return Err(Rejection::new(
            RejectionKind::Policy,
            "rollback is disabled ([commands] rollback = false): it discards everything since the snapshot; enable it deliberately",
        ));
    }
    Ok(())
}

/// The allow list alone (used to decide which guests get control entities in HA).
pub fn allowed(policy: &CommandsConfig, guest: &GuestState) -> bool {
    policy.allow.is_empty()
        || policy.allow.iter().any(|rule| match rule {
            AllowRule::Vmid(vmid) => *vmid == guest.vmid,
            AllowRule::Tag(tag) => guest.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)),
            AllowRule::Pool(pool) => guest.pool.as_deref() == Some(pool.as_str()),
        })
}

/// The policy's answer for discovery: which guests get control entities in HA.
pub fn guest_controls(policy: &CommandsConfig) -> GuestControls {
    let policy = policy.clone();
    let node_power = super::node::node_power_possible(&policy);
    GuestControls::new(move |guest| commands_possible(&policy) && allowed(&policy, guest))
        .with_node_power(node_power)
}

/// Does this config let any command through at all?
pub fn commands_possible(policy: &CommandsConfig) -> bool {
    policy.enabled && !policy.read_only
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OptF64, OptU64};
    use crate::pve::GuestKind;

    fn guest(vmid: u32, tags: &[&str], pool: Option<&str>) -> GuestState {
        GuestState {
            vmid,
            kind: GuestKind::Qemu,
            name: None,
            node: "pve".into(),
            status: "running".into(),
            template: false,
            cpu: OptF64::NONE,
            cpus: OptU64::NONE,
            mem: OptU64::NONE,
            maxmem: OptU64::NONE,
            mem_percent: OptF64::NONE,
            disk: OptU64::NONE,
            maxdisk: OptU64::NONE,
            netin: OptU64::NONE,
            netout: OptU64::NONE,
            diskread: OptU64::NONE,
            diskwrite: OptU64::NONE,
            netin_rate: OptF64::NONE,
            netout_rate: OptF64::NONE,
            diskread_rate: OptF64::NONE,
            diskwrite_rate: OptF64::NONE,
            uptime: OptU64::NONE,
            started: OptU64::NONE,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            lock: None,
            hastate: None,
            pool: pool.map(Into::into),
            backup: Default::default(),
            backup_stale: None,
            lanes: Default::default(),
            as_of: 0.0,
        }
    }

    fn policy(enabled: bool, read_only: bool, allow: Vec<AllowRule>) -> CommandsConfig {
        CommandsConfig {
            enabled,
            read_only,
            allow,
            ..CommandsConfig::default()
        }
    }

    #[test]
    fn empty_allow_list_admits_every_guest() {
        assert!(authorize(&policy(true, false, vec![]), &guest(100, &[], None)).is_ok());
    }

    #[test]
    fn read_only_and_disabled_refuse_everything() {
        let g = guest(100, &[], None);
        assert!(authorize(&policy(true, true, vec![]), &g)
            .unwrap_err()
            .reason
            .contains("read-only"));
        assert!(authorize(&policy(false, false, vec![]), &g)
            .unwrap_err()
            .reason
            .contains("disabled"));
    }

    #[test]
    fn rollback_needs_its_own_switch() {
        let mut p = policy(true, false, vec![]);
        let refused = authorize_action(&p, Action::Rollback).unwrap_err();
        assert_eq!(refused.kind, RejectionKind::Policy);
        assert!(refused.reason.contains("rollback = false"), "{refused}");
        assert!(authorize_action(&p, Action::Snapshot).is_ok());
        assert!(authorize_action(&p, Action::DeleteSnapshot).is_ok());
        p.rollback = true;
        assert!(authorize_action(&p, Action::Rollback).is_ok());
    }

    #[test]
    fn allow_by_vmid_tag_or_pool() {
        let p = policy(
            true,
            false,
            vec![
                AllowRule::Vmid(100),
                AllowRule::Tag("ha-control".into()),
                AllowRule::Pool("home".into()),
            ],
        );
        assert!(authorize(&p, &guest(100, &[], None)).is_ok());
        assert!(authorize(&p, &guest(101, &["HA-Control"], None)).is_ok());
        assert!(authorize(&p, &guest(102, &[], Some("home"))).is_ok());
        let refused = authorize(&p, &guest(103, &["other"], Some("lab"))).unwrap_err();
        assert!(refused.reason.contains("not in [commands] allow"));
    }
}
