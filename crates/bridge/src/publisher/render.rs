//! The payloads the publisher renders from a view: availability and the JSON state of one
//! object.

use crate::model::{ClusterView, ObjectRef};

pub(super) fn availability(online: bool) -> Vec<u8> {
    if online {
        b"online".to_vec()
    } else {
        b"offline".to_vec()
    }
}

/// The retained JSON state of one object (SPEC §3).
pub fn state_json(view: &ClusterView, object: &ObjectRef) -> Option<String> {
    let json = match object {
        ObjectRef::Cluster => serde_json::to_string(&view.cluster),
        ObjectRef::Node(n) => serde_json::to_string(view.nodes.get(n)?),
        ObjectRef::Guest(_, vmid) => serde_json::to_string(&**view.guests.get(vmid)?),
        ObjectRef::Storage(n, s) => {
            serde_json::to_string(view.storages.get(&(n.clone(), s.clone()))?)
        }
        ObjectRef::Disk(n, d) => serde_json::to_string(view.disks.get(&(n.clone(), d.clone()))?),
        ObjectRef::Zfs(n, p) => serde_json::to_string(view.zfs.get(&(n.clone(), p.clone()))?),
    };
    json.ok()
}
