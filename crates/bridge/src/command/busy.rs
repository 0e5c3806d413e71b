//! One command at a time per guest, and one follower per Proxmox task, enforced by guards.
//!
//! A guest's slot is held by a [`BusyGuard`] that the runner owns, so it is freed when
//! the runner ends however it ends: a normal result, the bridge stopping, or a panic
//! (unwinding drops the runner's future and with it the guard). A slot freed by a
//! message instead would stay taken forever after a panic.
//!
//! The set also remembers what this run has done, so that a report the broker hands
//! back at a reconnect is never mistaken for an earlier run's task:
//! - every guest this run has held a slot for: its retained `…/task` report is this
//!   run's own (or one this run has superseded), never a task to resume;
//! - the UPIDs being followed, each by exactly one runner ([`FollowGuard`]); a guest
//!   whose report names a followed UPID joins that runner instead of starting another.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::runner::Target;

type Key = (String, u32);
/// (cluster, UPID text).
type TaskKey = (String, String);
/// A guest joining a task's follower, with its slot.
pub type Joiner = (Target, BusyGuard);

#[derive(Debug, Default)]
struct Slots {
    /// Guests with a command in flight.
    held: HashSet<Key>,
    /// Guests this run has held a slot for, ever. Bounded by the guests there are: a
    /// slot is only taken for a guest a poll has seen or a report the broker holds.
    taken: HashSet<Key>,
    /// Tasks being followed, with the guests waiting to join their follower.
    following: HashMap<TaskKey, Vec<Joiner>>,
}

/// The guests, as (cluster, vmid), with a command in flight, and the tasks followed.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct BusySet(Arc<Mutex<Slots>>);

impl BusySet {
    /// A poisoned lock only means a panic elsewhere; the set itself is always whole.
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_busy(&self, cluster: &str, vmid: u32) -> bool {
        self.lock().held.contains(&(cluster.to_string(), vmid))
    }

    /// Whether this run has ever held the guest's slot: then the broker's retained
    /// report for it is this run's own, or older than one of this run's.
    pub fn taken_by_this_run(&self, cluster: &str, vmid: u32) -> bool {
        self.lock().taken.contains(&(cluster.to_string(), vmid))
    }

    /// Takes the guest's slot, or `None` while another command holds it.
    pub fn claim(&self, cluster: &str, vmid: u32) -> Option<BusyGuard> {
        let key = (cluster.to_string(), vmid);
        let mut slots = self.lock();
        if !slots.held.insert(key.clone()) {
            return None;
        }
        slots.taken.insert(key.clone());
        Some(BusyGuard {
            set: self.clone(),
            key,
        })
    }

    /// Takes every slot or none (a backup request is validated all-or-nothing); `Err`
    /// names the first busy guest.
    pub fn claim_all(&self, cluster: &str, vmids: &[u32]) -> Result<Vec<BusyGuard>, u32> {
        let mut slots = self.lock();
        if let Some(&busy) = vmids
            .iter()
            .find(|v| slots.held.contains(&(cluster.to_string(), **v)))
        {
            return Err(busy);
        }
        Ok(vmids
            .iter()
            .filter_map(|&vmid| {
                let key = (cluster.to_string(), vmid);
                slots.taken.insert(key.clone());
                slots.held.insert(key.clone()).then(|| BusyGuard {
                    set: self.clone(),
                    key,
                })
            })
            .collect())
    }

    /// Registers the one follower of `upid`, or `None` when a runner follows it already.
    pub fn follow(&self, cluster: &str, upid: &str) -> Option<FollowGuard> {
        let key = (cluster.to_string(), upid.to_string());
        let mut slots = self.lock();
        if slots.following.contains_key(&key) {
            return None;
        }
        slots.following.insert(key.clone(), Vec::new());
        Some(FollowGuard {
            set: self.clone(),
            key,
        })
    }

    /// Hands a guest to the runner following `upid`; gives it back (`Some`) when none
    /// does.
    #[must_use]
    pub fn join(&self, cluster: &str, upid: &str, joiner: Joiner) -> Option<Joiner> {
        let key = (cluster.to_string(), upid.to_string());
        match self.lock().following.get_mut(&key) {
            Some(waiting) => {
                waiting.push(joiner);
                None
            }
            None => Some(joiner),
        }
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
        self.set.lock().held.remove(&self.key);
    }
}

/// Marks one task as followed; dropping it lets another runner follow it.
#[derive(Debug)]
pub struct FollowGuard {
    set: BusySet,
    key: TaskKey,
}

impl FollowGuard {
    /// The guests that joined since the last call.
    pub fn joined(&self) -> Vec<Joiner> {
        let mut slots = self.set.lock();
        slots
            .following
            .get_mut(&self.key)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Ends the follow: from now on a guest naming this task starts a follower of its
    /// own (which finds the task ended). Returns the guests that joined meanwhile.
    pub fn close(self) -> Vec<Joiner> {
        let left = self.set.lock().following.remove(&self.key);
        left.unwrap_or_default()
    }
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        // Joiners not taken are dropped after the lock is released (their guards lock).
        let left = self.set.lock().following.remove(&self.key);
        drop(left);
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

    #[test]
    fn a_guest_this_run_has_held_stays_known_after_its_slot_is_freed() {
        let busy = BusySet::default();
        assert!(!busy.taken_by_this_run("pve", 100));
        drop(busy.claim("pve", 100));
        drop(busy.claim_all("pve", &[101]).unwrap());
        assert!(busy.taken_by_this_run("pve", 100) && busy.taken_by_this_run("pve", 101));
        assert!(!busy.is_busy("pve", 100));
    }

    #[test]
    fn a_task_has_one_follower_and_others_join_it_until_it_closes() {
        use crate::command::report::TaskReport;
        use crate::pve::GuestKind;
        let busy = BusySet::default();
        let upid = "UPID:pve:0000A1B2:0001C3D4:6803E819:vzdump::root@pam!bridge:";
        let follow = busy.follow("pve", upid).expect("first follower");
        assert!(busy.follow("pve", upid).is_none(), "one follower per task");
        let joiner = |vmid| {
            let target = Target {
                kind: GuestKind::Qemu,
                vmid,
                report: TaskReport::new(None, "backup", 0),
            };
            (target, busy.claim("pve", vmid).unwrap())
        };
        assert!(busy.join("pve", upid, joiner(101)).is_none(), "joins");
        assert_eq!(follow.joined().len(), 1);
        assert!(follow.joined().is_empty(), "taken once");
        assert!(busy.join("pve", upid, joiner(102)).is_none(), "joins");
        let left = follow.close();
        assert_eq!(left.len(), 1, "the last joiner is handed over at close");
        assert!(busy.join("pve", upid, joiner(103)).is_some(), "closed");
        assert!(busy.follow("pve", upid).is_some(), "free again");
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
