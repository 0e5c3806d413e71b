//! API tokens and their privileges, modelled on Proxmox ACLs.
//!
//! A token carries privileges per ACL path. Like a Proxmox ACL with `propagate=1`, an entry
//! on `/vms` covers `/vms/100`, one on `/` covers everything, and the most specific path
//! with an entry wins (a deeper ACL replaces what a parent grants, it does not add to it).

use std::collections::{BTreeMap, BTreeSet};

/// Every privilege of PVE 9 (`pveum role list`), granted to the unrestricted token.
pub const ALL_PRIVILEGES: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Group.Allocate",
    "Mapping.Audit",
    "Mapping.Modify",
    "Mapping.Use",
    "Permissions.Modify",
    "Pool.Allocate",
    "Pool.Audit",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.AccessNetwork",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Incoming",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "Sys.Syslog",
    "User.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.GuestAgent.Audit",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Replicate",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// Why a token string was refused; each maps to the pre-9.1.5 401 reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("invalid token value!")]
    Malformed,
    #[error("no tokenid specified")]
    NoTokenId,
}

/// An API token: `USER@REALM!TOKENID=SECRET`.
#[derive(Clone, Debug)]
pub struct Token {
    /// `user@realm!tokenid`, as it appears in UPIDs.
    pub full_id: String,
    pub secret: String,
    /// `None`: every privilege everywhere (the simulator's default token).
    pub privileges: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl Token {
    /// Parses `USER@REALM!TOKENID=SECRET`.
    pub fn parse(value: &str) -> Result<(String, String), TokenParseError> {
        let (full_id, secret) = value.split_once('=').ok_or(TokenParseError::Malformed)?;
        let (user, tokenid) = full_id.split_once('!').ok_or(TokenParseError::NoTokenId)?;
        let user_ok = user
            .split_once('@')
            .is_some_and(|(name, realm)| !name.is_empty() && !realm.is_empty())
            && !user.contains(char::is_whitespace);
        let tokenid_ok = tokenid
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && tokenid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !user_ok || !tokenid_ok || secret.is_empty() {
            return Err(TokenParseError::Malformed);
        }
        Ok((full_id.to_string(), secret.to_string()))
    }

    /// Holds every privilege everywhere (no ACLs to evaluate).
    pub fn unrestricted(&self) -> bool {
        self.privileges.is_none()
    }

    /// The privileges in effect on `path`.
    pub fn effective(&self, path: &str) -> BTreeSet<String> {
        match &self.privileges {
            None => ALL_PRIVILEGES.iter().map(|p| p.to_string()).collect(),
            Some(acl) => {
                let mut candidate = path.trim_end_matches('/').to_string();
                loop {
                    let key = if candidate.is_empty() {
                        "/"
                    } else {
                        &candidate
                    };
                    if let Some(privileges) = acl.get(key) {
                        return privileges.clone();
                    }
                    if candidate.is_empty() {
                        return BTreeSet::new();
                    }
                    match candidate.rfind('/') {
                        Some(slash) => candidate.truncate(slash),
                        None => candidate.clear(),
                    }
                }
            }
        }
    }

    pub fn has(&self, path: &str, privilege: &str) -> bool {
        match &self.privileges {
            None => true,
            Some(_) => self.effective(path).contains(privilege),
        }
    }

    pub fn has_any(&self, path: &str, privileges: &[&str]) -> bool {
        match &self.privileges {
            None => true,
            Some(_) => {
                let effective = self.effective(path);
                privileges.iter().any(|p| effective.contains(*p))
            }
        }
    }

    /// What `GET /access/permissions` returns: ACL path to `{privilege: 1}`.
    pub fn permission_map(&self) -> BTreeMap<String, BTreeSet<String>> {
        match &self.privileges {
            None => BTreeMap::from([(
                "/".to_string(),
                ALL_PRIVILEGES.iter().map(|p| p.to_string()).collect(),
            )]),
            Some(acl) => acl.clone(),
        }
    }
}

/// Splits `user@realm!tokenid` into (`user@realm`, `tokenid`); a plain user has no token.
pub fn split_token_user(full: &str) -> (&str, Option<&str>) {
    match full.split_once('!') {
        Some((user, tokenid)) => (user, Some(tokenid)),
        None => (full, None),
    }
}

/// The message of a failed permission check: `Permission check failed (/vms/100, VM.PowerMgmt)`.
pub fn permission_denied(path: &str, privileges: &[&str]) -> String {
    format!("Permission check failed ({path}, {})", privileges.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restricted(entries: &[(&str, &[&str])]) -> Token {
        Token {
            full_id: "bridge@pve!ro".into(),
            secret: "s".into(),
            privileges: Some(
                entries
                    .iter()
                    .map(|(path, privs)| {
                        (
                            path.to_string(),
                            privs.iter().map(|p| p.to_string()).collect(),
                        )
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn parses_full_token_strings() {
        let (id, secret) = Token::parse("root@pam!pve2mqtt=5ec12e7a").expect("token");
        assert_eq!(id, "root@pam!pve2mqtt");
        assert_eq!(secret, "5ec12e7a");
        assert_eq!(
            Token::parse("root@pam=secret"),
            Err(TokenParseError::NoTokenId)
        );
        assert_eq!(Token::parse("garbage"), Err(TokenParseError::Malformed));
        assert_eq!(
            Token::parse("root@pam!9bad=x"),
            Err(TokenParseError::Malformed)
        );
    }

    #[test]
    fn acl_entries_propagate_and_the_deepest_path_wins() {
        let token = restricted(&[
            ("/", &["Sys.Audit"]),
            ("/vms", &["VM.Audit"]),
            ("/vms/100", &["VM.Audit", "VM.PowerMgmt"]),
        ]);
        assert!(token.has("/nodes/pve", "Sys.Audit"));
        assert!(token.has("/vms/101", "VM.Audit"));
        assert!(!token.has("/vms/101", "VM.PowerMgmt"));
        assert!(token.has("/vms/100", "VM.PowerMgmt"));
        // A deeper entry replaces the parent's privileges rather than adding to them.
        assert!(!token.has("/vms/100", "Sys.Audit"));
        assert!(!token.has("/storage/local", "Datastore.Audit"));
        assert!(token.has_any("/vms/5", &["Datastore.Audit", "VM.Audit"]));
    }

    #[test]
    fn a_token_without_acls_has_nothing() {
        let token = restricted(&[]);
        assert!(!token.has("/", "Sys.Audit"));
        assert!(token.effective("/vms/100").is_empty());
    }

    #[test]
    fn formats_permission_errors_like_proxmox() {
        assert_eq!(
            permission_denied("/vms/100", &["VM.PowerMgmt"]),
            "Permission check failed (/vms/100, VM.PowerMgmt)"
        );
        assert_eq!(
            permission_denied(
                "/storage/local",
                &["Datastore.Audit", "Datastore.AllocateSpace"]
            ),
            "Permission check failed (/storage/local, Datastore.Audit|Datastore.AllocateSpace)"
        );
    }
}
