//! One command at a time per guest, enforced by guards.
//!
//! A guest's slot is held by a [`BusyGuard`] that the runner owns, so it is freed when
//! the runner ends however it ends: a normal result, the bridge stopping, or a panic
//! (unwinding drops the runner's future and with it the guard). A slot freed by a
//! message instead would stay taken forever after a panic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

type Key = (String, u32);

/// The guests, as (cluster, vmid), with a command in flight. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct BusySet(Arc<Mutex<HashSet<Key>>>);

impl BusySet {
    /// A poisoned lock only means a panic elsewhere; the set itself is always whole.
    fn lock(&self) -> MutexGuard<'_, HashSet<Key>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_busy(&self, cluster: &str, vmid: u32) -> bool {
        self.lock().contains(&(cluster.to_string(), vmid))
    }

    /// Takes the guest's slot, or `None` while another command holds it.
    pub fn claim(&self, cluster: &str, vmid: u32) -> Option<BusyGuard> {
        let key = (cluster.to_string(), vmid);
        self.lock().insert(key.clone()).then(|| BusyGuard {
            set: self.clone(),
            key,
        })
    }

    /// Takes every slot or none (a backup request is validated all-or-nothing); `Err`
    /// names the first busy guest.
    pub fn claim_all(&self, cluster: &str, vmids: &[u32]) -> Result<Vec<BusyGuard>, u32> {
        let mut set = self.lock();
        if let Some(&busy) = vmids
            .iter()
            .find(|v| set.contains(&(cluster.to_string(), **v)))
        {
            return Err(busy);
        }
        Ok(vmids
            .iter()
            .filter_map(|&vmid| {
                let key = (cluster.to_string(), vmid);
                set.insert(key.clone()).then(|| BusyGuard {
                    set: self.clone(),
                    key,
                })
            })
            .collect())
    }
}

/// Holds one guest's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct BusyGuard {
    set: BusySet,
    key: Key,
}

impl BusyGuard {
    /// The guest this guard holds.
    pub fn vmid(&self) -> u32 {
        self.key.1
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_takes_one_command_at_a_time_and_the_slot_frees_on_drop() {
        let busy = BusySet::default();
        let guard = busy.claim("pve", 100).expect("free at first");
        assert!(busy.claim("pve", 100).is_none());
        assert!(
            busy.claim("other", 100).is_some(),
            "clusters do not share slots"
        );
        drop(guard);
        assert!(!busy.is_busy("pve", 100));
        assert!(busy.claim("pve", 100).is_some());
    }

    #[test]
    fn claiming_several_guests_is_all_or_nothing() {
        let busy = BusySet::default();
        let _held = busy.claim("pve", 101).unwrap();
        assert_eq!(busy.claim_all("pve", &[100, 101, 102]).unwrap_err(), 101);
        assert!(!busy.is_busy("pve", 100) && !busy.is_busy("pve", 102));
        let guards = busy.claim_all("pve", &[100, 102]).unwrap();
        assert_eq!(guards.len(), 2);
        drop(guards);
        assert!(!busy.is_busy("pve", 100) && !busy.is_busy("pve", 102));
    }

    #[tokio::test]
    async fn a_panicking_runner_frees_its_guests() {
        let busy = BusySet::default();
        let guards = busy.claim_all("pve", &[100, 101]).unwrap();
        let runner = tokio::spawn(async move {
            let _guards = guards;
            tokio::task::yield_now().await;
            panic!("a bug in the runner");
        });
        assert!(runner.await.unwrap_err().is_panic());
        assert!(!busy.is_busy("pve", 100));
        assert!(!busy.is_busy("pve", 101));
        assert!(
            busy.claim("pve", 100).is_some(),
            "the guest takes commands again"
        );
    }
}
