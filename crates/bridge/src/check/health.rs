//! The `check` lines of the node-health details (issue 11): can the token read disks,
//! ZFS pools, installed versions, pending updates and certificates?
use crate::config::PollConfig;
use crate::pve::Permissions;

/// One line per detail, indented like the other privilege lines. `Sys.Audit` on `/`
/// covers disks (`/` or `/nodes/{node}`), ZFS (`/` only) and `apt/versions` (the node);
/// `apt/update` needs `Sys.Modify` on the node; `certificates/info` any token.
pub(super) fn lines(perms: &Permissions, poll: &PollConfig) -> Vec<String> {
    let audit_root = perms.has("/", "Sys.Audit");
    let audit_nodes = perms.has("/nodes", "Sys.Audit");
    let mut lines = Vec::new();
    lines.push(match (audit_root, audit_nodes) {
        (true, _) => "node health (disks, ZFS, reboot required): yes".to_string(),
        (false, true) => "node health (disks, ZFS, reboot required): disks and reboot required only — missing Sys.Audit on / (ZFS pools)".to_string(),
        (false, false) => "node health (disks, ZFS, reboot required): no — missing Sys.Audit on / (disks, ZFS pools, installed versions)".to_string(),
    });
    let note = if poll.updates {
        ""
    } else {
        " (poll.updates is off in the config)"
    };
    if perms.has("/nodes", "Sys.Modify") {
        lines.push(format!("package updates: yes{note}"));
    } else {
        lines.push(format!(
            "package updates: no — missing Sys.Modify on /nodes (apt/update; skipped quietly){note}"
        ));
    }
    lines.push("certificate expiry: yes (any token)".to_string());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(json: serde_json::Value) -> Permissions {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn updates_need_sys_modify_and_say_when_they_are_off() {
        let audit = perms(serde_json::json!({"/": {"Sys.Audit": 1}}));
        let lines = lines(&audit, &PollConfig::default());
        assert_eq!(lines[0], "node health (disks, ZFS, reboot required): yes");
        assert!(lines[1].starts_with("package updates: no — missing Sys.Modify"));
        assert!(lines[1].ends_with("(poll.updates is off in the config)"));
        let modify = perms(serde_json::json!({"/": {"Sys.Audit": 1, "Sys.Modify": 1}}));
        let poll = PollConfig {
            updates: true,
            ..PollConfig::default()
        };
        assert_eq!(super::lines(&modify, &poll)[1], "package updates: yes");
    }
}
