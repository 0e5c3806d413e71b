//! [`ViewBuilder`]: one `/cluster/resources` answer, row by row, into a [`ClusterView`].
//! Unchanged guest rows reuse the previous view's state (the row memory, `memo`); changed
//! ones are scanned ([`RawRow::scan_guest`]) or, in any other shape, decoded.
use std::sync::Arc;

use super::guest::{self, guest_state};
use super::node::{node_needs_report, node_state};
use super::storage::{storage_needs_report, storage_state};
use super::{
    health, lanes, memo, AgentData, ClusterState, ClusterView, GuestState, RateMemory, ReportRules,
    RowMemo, SlowData, TaskFacts,
};
use crate::pve::{
    for_each_cluster_row, row_hash, GuestRow, PveError, RawRow, Resource, ResourceKind,
};

/// Builds the view of one cluster from one `/cluster/resources` answer, with the default
/// [`ReportRules`] (see [`ViewBuilder::reporting`]).
///
/// `now` is the poll time in Unix seconds, advancing monotonically (the poller counts it
/// from its start); `rates` carries counter samples between polls. An object whose state
/// needs no report against its state in `previous` keeps that state (guests share it).
pub fn build_view(
    id: &str,
    console_url: &str,
    resources: &[Resource],
    slow: &SlowData,
    rates: &mut RateMemory,
    now: f64,
    previous: Option<&ClusterView>,
) -> ClusterView {
    let mut builder = ViewBuilder::new(id, console_url, slow, rates, now, previous);
    for row in resources {
        builder.add(row);
    }
    builder.finish()
}

/// [`build_view`] one row at a time, so the fast lane never holds every decoded row at
/// once (see [`crate::pve::for_each_cluster_resource`]).
pub struct ViewBuilder<'a> {
    view: ClusterView,
    slow: &'a SlowData,
    rates: &'a mut RateMemory,
    now: f64,
    previous: Option<&'a ClusterView>,
    rules: ReportRules,
    /// What the task list says (`None` = not read: nodes carry `failed_tasks_24h: null`).
    tasks: Option<&'a TaskFacts>,
    /// The agent lane's knowledge, if any (see [`ViewBuilder::agent`]).
    agent: Option<&'a AgentData>,
    /// The last answer's rows (see [`ViewBuilder::memo`]).
    memo: Option<&'a mut RowMemo>,
    /// The answer the memory's rows are of, if it was read whole (see
    /// [`ViewBuilder::add_answer`]).
    answer: Option<memo::Answer>,
    /// The texts the new guest states of this view share.
    texts: guest::Texts,
}

/// What [`ViewBuilder::add_raw`] did with a row.
// Returned once per row and consumed at once: boxing the row would cost an allocation
// per row for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RowAdded {
    /// A guest row as in the last answer: its state, reused, not decoded.
    Reused(Arc<GuestState>),
    /// A guest row read by [`RawRow::scan_guest`](crate::pve::RawRow::scan_guest), not
    /// decoded: its state (the guest's previous one, or a new one).
    Scanned(Arc<GuestState>),
    /// The row, decoded and added.
    Decoded(Resource),
}

impl<'a> ViewBuilder<'a> {
    pub fn new(
        id: &str,
        console_url: &str,
        slow: &'a SlowData,
        rates: &'a mut RateMemory,
        now: f64,
        previous: Option<&'a ClusterView>,
    ) -> Self {
        ViewBuilder {
            view: ClusterView {
                id: id.to_string(),
                console_url: console_url.to_string(),
                ..ClusterView::default()
            },
            slow,
            rates,
            now,
            previous,
            rules: ReportRules::default(),
            tasks: None,
            agent: None,
            memo: None,
            answer: None,
            texts: guest::Texts::default(),
        }
    }

    /// Merges what the task list says (failed tasks per node).
    pub fn tasks(mut self, facts: &'a TaskFacts) -> Self {
        self.tasks = Some(facts);
        self
    }

    /// Merges the agent lane's knowledge into the guests.
    pub fn agent(mut self, data: &'a AgentData) -> Self {
        self.agent = Some(data);
        self
    }

    /// Reports by these rules instead of the defaults.
    pub fn reporting(mut self, rules: ReportRules) -> Self {
        self.rules = rules;
        self
    }

    /// Remembers the rows in `memo` and reuses the states of the guest rows that are as
    /// in the last answer (see [`RowMemo`]), through [`ViewBuilder::add_raw`]. `slow`
    /// and `agent` are the data given to [`ViewBuilder::new`] and [`ViewBuilder::agent`];
    /// call this last.
    pub fn memo(
        mut self,
        memo: &'a mut RowMemo,
        slow: &Arc<SlowData>,
        agent: &Arc<AgentData>,
    ) -> Self {
        debug_assert!(std::ptr::eq(&**slow, self.slow));
        debug_assert!(self.agent.is_none_or(|a| std::ptr::eq(&**agent, a)));
        memo.begin(slow, agent, &self.rules);
        self.answer = memo.take_answer();
        self.memo = Some(memo);
        self
    }

    /// Adds every row of a `/cluster/resources` answer as [`ViewBuilder::add_raw`] does,
    /// handing each to `each` with what was done with it (an error from `each` fails the
    /// answer, as one from [`for_each_cluster_row`]); returns how many rows there were.
    ///
    /// With the memory (see [`ViewBuilder::memo`]), an answer byte for byte the one it
    /// remembers (the same length and the same hash of all its bytes: a view rebuilt from
    /// the last answer) is not scanned for its rows again, nor is each row hashed again:
    /// its rows are where they were, with the hashes they had. Each row is then added
    /// exactly as on any other answer (so what depends on the time, the slow lane or the
    /// agents is evaluated as always).
    pub fn add_answer(
        &mut self,
        body: &[u8],
        mut each: impl FnMut(RawRow<'_>, RowAdded) -> Result<(), serde_json::Error>,
    ) -> Result<usize, PveError> {
        let remembering = self.memo.is_some();
        let (len, hash) = (body.len(), if remembering { row_hash(body) } else { 0 });
        let known = self
            .answer
            .take()
            .filter(|a| a.len == len && a.hash == hash);
        let text = std::str::from_utf8(body).ok();
        if let (Some(answer), Some(text)) = (known, text) {
            for (index, row) in answer.rows.iter().enumerate() {
                let Some(text) = text.get(row.start as usize..row.end as usize) else {
                    return Err(answer_error(body, index));
                };
                let raw = RawRow::new(text);
                let added = self
                    .add_raw_hashed(raw, row.hash)
                    .and_then(|added| each(raw, added));
                if added.is_err() {
                    return Err(answer_error(body, index));
                }
            }
            let rows = answer.rows.len();
            if let Some(memo) = self.memo.as_deref_mut() {
                memo.set_answer(answer);
                #[cfg(test)]
                {
                    memo.replayed += 1;
                }
            }
            return Ok(rows);
        }
        if !remembering {
            return for_each_cluster_row(body, |raw| {
                let added = self.add_raw(raw)?;
                each(raw, added)
            });
        }
        // Where each row is, as an offset into `body`, and its hash (a row the decoder
        // copied, which Proxmox's plain shape never makes it do, leaves the answer
        // unremembered).
        let base = body.as_ptr() as usize;
        let mut rows = Some(Vec::new());
        let count = for_each_cluster_row(body, |raw| {
            let start = (raw.text().as_ptr() as usize).wrapping_sub(base);
            let end = start.wrapping_add(raw.text().len());
            let hash = raw.hash();
            match rows.as_mut() {
                Some(rows) if start <= end && end <= len => {
                    rows.push(memo::AnswerRow {
                        start: start as u32,
                        end: end as u32,
                        hash,
                    });
                }
                _ => rows = None,
            }
            let added = self.add_raw_hashed(raw, hash)?;
            each(raw, added)
        })?;
        if let (Some(mut rows), Some(memo)) = (rows, self.memo.as_deref_mut()) {
            rows.shrink_to_fit();
            memo.set_answer(memo::Answer { len, hash, rows });
        }
        Ok(count)
    }

    /// Adds one undecoded row. A guest row with the same members as one of the last
    /// answer (in any order, anywhere in it), whose state the previous view still
    /// reports, is not decoded (see [`RowMemo`]); any other row is decoded and added as
    /// by [`ViewBuilder::add`]. A row that cannot be decoded is an error, and the memory
    /// is cleared.
    pub fn add_raw(&mut self, raw: RawRow<'_>) -> Result<RowAdded, serde_json::Error> {
        if self.memo.is_none() {
            let row = raw.decode()?;
            self.add(&row);
            return Ok(RowAdded::Decoded(row));
        }
        self.add_raw_hashed(raw, raw.hash())
    }

    /// [`ViewBuilder::add_raw`] with the memory, of a row whose hash is known.
    fn add_raw_hashed(
        &mut self,
        raw: RawRow<'_>,
        hash: u64,
    ) -> Result<RowAdded, serde_json::Error> {
        if let Some((state, remembered)) = self.reusable(hash) {
            if let Some(memo) = self.memo.as_deref_mut() {
                memo.keep(memo::MemoRow::guest(hash, &state, remembered));
            }
            self.view.guests.insert(state.vmid, state.clone());
            return Ok(RowAdded::Reused(state));
        }
        if let Some(guest) = raw.scan_guest() {
            let (state, remembered) = self.guest(&guest, Some(hash));
            if let Some(memo) = self.memo.as_deref_mut() {
                memo.keep(remembered);
            }
            return Ok(RowAdded::Scanned(state));
        }
        match raw.decode() {
            Ok(row) => {
                self.add_row(&row, Some(hash));
                Ok(RowAdded::Decoded(row))
            }
            Err(err) => {
                if let Some(memo) = self.memo.as_deref_mut() {
                    memo.clear();
                }
                Err(err)
            }
        }
    }

    /// The previous view's state of the guest row with this hash, if the memory says it
    /// stands, and what to remember of it now.
    fn reusable(&self, hash: u64) -> Option<(Arc<GuestState>, guest::Remembered)> {
        let memo = self.memo.as_deref()?;
        let row = memo.get(hash)?;
        let state = self.previous?.guests.get(&row.vmid)?;
        if Arc::as_ptr(state) as usize != row.state {
            return None;
        }
        let lanes = (!memo.lanes_same()).then(|| {
            let agent = self.agent.and_then(|a| a.get(&row.vmid));
            lanes::LaneDraft::of(row.vmid, state.kind, self.slow, agent)
        });
        let remembered = guest::still_reported(
            state,
            row.remembered(),
            lanes,
            self.slow,
            (&self.rules, self.now),
        )?;
        Some((state.clone(), remembered))
    }

    pub fn add(&mut self, row: &Resource) {
        self.add_row(row, None);
    }

    /// Adds a decoded row; with its hash, remembers it in the memory.
    fn add_row(&mut self, row: &Resource, hash: Option<u64>) {
        let mut remembered = memo::MemoRow::NONE;
        let (rules, now) = (&self.rules, self.now);
        match row.kind {
            ResourceKind::Node => {
                let before = row
                    .node
                    .as_deref()
                    .and_then(|n| self.previous?.nodes.get(n));
                if let Some(mut fresh) = node_state(row, self.slow, now, before) {
                    fresh.failed_tasks_24h = self.tasks.and_then(|t| t.failed_for(&fresh.node));
                    let node = match before {
                        Some(b) if !node_needs_report(&fresh, b, rules, now) => b.clone(),
                        _ => fresh,
                    };
                    self.view.nodes.insert(node.node.clone(), node);
                }
            }
            ResourceKind::Qemu | ResourceKind::Lxc => {
                if let Some(guest) = GuestRow::of(row) {
                    remembered = self.guest(&guest, hash).1;
                }
            }
            ResourceKind::Storage => {
                if let Some(fresh) = storage_state(row, self.slow, now) {
                    let key = (fresh.node.clone(), fresh.storage.clone());
                    let storage = match self.previous.and_then(|p| p.storages.get(&key)) {
                        Some(b) if !storage_needs_report(&fresh, b, rules, now) => b.clone(),
                        _ => fresh,
                    };
                    self.view.storages.insert(key, storage);
                }
            }
            // pools, SDN zones, PVE 9 network rows and anything newer: not published (yet).
            _ => {}
        }
        if let Some(memo) = self.memo.as_deref_mut() {
            memo.keep(remembered);
        }
    }

    /// Adds a guest's row, scanned or decoded; returns its state and, with the row's
    /// hash, what the memory keeps of it.
    fn guest(&mut self, row: &GuestRow<'_>, hash: Option<u64>) -> (Arc<GuestState>, memo::MemoRow) {
        let agent = self.agent.and_then(|a| a.get(&row.vmid));
        let guest = guest_state(
            row,
            (self.slow, agent),
            self.rates,
            (&self.rules, self.now),
            (self.previous, &mut self.texts),
        );
        let remembered = match hash {
            Some(hash) => {
                let kept = guest::Remembered {
                    uptime: row.uptime,
                    threshold: guest.threshold,
                    threshold_rest: guest.threshold_rest,
                };
                memo::MemoRow::guest(hash, &guest.state, kept)
            }
            None => memo::MemoRow::NONE,
        };
        self.view
            .guests
            .insert(guest.state.vmid, guest.state.clone());
        (guest.state, remembered)
    }

    pub fn finish(self) -> ClusterView {
        let ViewBuilder {
            mut view,
            slow,
            rates,
            previous,
            rules,
            now,
            memo,
            ..
        } = self;
        if let Some(memo) = memo {
            memo.finish();
        }
        health::add_health_objects(&mut view, &slow.node_health, previous, &rules, now);
        rates.retain(|vmid| view.guests.contains_key(&vmid));
        view.cluster = ClusterState {
            id: view.id.clone(),
            name: slow.cluster_name.clone(),
            quorate: slow.quorate,
            nodes: view.nodes.len(),
            nodes_online: view.nodes.values().filter(|n| n.status == "online").count(),
            guests: view.guests.len(),
            guests_running: view
                .guests
                .values()
                .filter(|g| &*g.status == "running")
                .count(),
            pve_version: slow.pve_version.clone(),
            ceph: slow.health.ceph.clone(),
            ha: slow.health.ha.clone(),
            health_known: slow.health.known,
            health_pending: slow.health.pending,
        };
        view
    }
}

/// The error of an answer one of whose rows could not be read: the one
/// [`for_each_cluster_row`] gives (endpoint and JSON path).
fn answer_error(body: &[u8], index: usize) -> PveError {
    crate::pve::decode_cluster_resources(body)
        .err()
        .unwrap_or_else(|| PveError::Decode {
            endpoint: "GET /cluster/resources".to_owned(),
            message: format!("row {index} could not be read"),
        })
}
