//! `{base}/{c}/{qemu|lxc}/{vmid}/last_task`: retained, published when it changes, for
//! guests the publisher knows; cleared with the guest (`remove_object`).

use super::{Outbox, Publisher};
use crate::model::{LastTask, ObjectRef};
use crate::pve::GuestKind;

impl<O: Outbox> Publisher<O> {
    pub(super) async fn apply_last_task(
        &mut self,
        cluster: String,
        kind: GuestKind,
        vmid: u32,
        task: &LastTask,
    ) {
        let known = self
            .clusters
            .get(&cluster)
            .is_some_and(|r| r.objects.contains_key(&ObjectRef::Guest(kind, vmid)));
        if !known {
            return;
        }
        let payload = task.to_json();
        let key = (cluster, kind, vmid);
        if self.last_tasks.get(&key) == Some(&payload) {
            return;
        }
        let topic = self.topics.last_task(&key.0, kind, vmid);
        self.last_tasks.insert(key, payload.clone());
        self.sink.send(&topic, payload, true).await;
    }
}
