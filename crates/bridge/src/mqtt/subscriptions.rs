//! The bridge's subscriptions on one connection: sent ahead of anything queued on every
//! ConnAck, and the refused ones sent again, spaced out, for as long as the connection
//! lasts.
//!
//! A broker can refuse a subscription for a while: NATS keeps each QoS 1 subscription as
//! a JetStream consumer, and a cluster without JetStream leaders (a node lost, the whole
//! cluster restarted) answers the SUBSCRIBE with a failure, often at once. An ACL being
//! fixed is the same from here. Without a retry the bridge would say `online` and be deaf
//! to commands until the next reconnect; with a fixed number of immediate retries it was
//! deaf all the same once they were used up in a few milliseconds (seen once in CI after a
//! whole NATS cluster restart). So the refused filters go out again after 1 s, 2 s, 4 s,
//! … up to every [`RETRY_MAX`], until the broker takes them: one SUBSCRIBE per 30 s
//! against a standing ACL refusal costs nothing.
//!
//! No timer of its own: [`Subscriptions::due`] is asked after every event of the event
//! loop, and the keep-alive ping makes one at least every 30 s, so a retry goes out at
//! most a keep-alive after its time (within a poll interval on a bridge that publishes).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{QoS, Request, SubAck, Subscribe, SubscribeFilter, SubscribeReasonCode};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The longest wait between two tries of refused subscriptions.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// From this many refusals in a row on one connection, the warning names an ACL as the
/// likely cause, once; later refusals are logged at debug.
pub const REFUSALS_BEFORE_ACL_HINT: u32 = 8;

pub(super) struct Subscriptions {
    filters: Vec<String>,
    /// Filter lists queued, in the order rumqttc sends them.
    queued: VecDeque<Vec<String>>,
    /// Filter lists sent, by packet id, until their SUBACK.
    sent: HashMap<u16, Vec<String>>,
    /// Refused filters waiting for their next try, and when it is.
    refused: Vec<String>,
    retry_at: Option<Instant>,
    /// Refusals on this connection so far.
    refusals: u32,
}

/// The wait before the `refusals`-th retry: 1 s, doubling, at most [`RETRY_MAX`].
fn retry_delay(refusals: u32) -> Duration {
    Duration::from_secs(1u64 << refusals.saturating_sub(1).min(5)).min(RETRY_MAX)
}

impl Subscriptions {
    pub(super) fn new(filters: Vec<String>) -> Subscriptions {
        Subscriptions {
            filters,
            queued: VecDeque::new(),
            sent: HashMap::new(),
            refused: Vec::new(),
            retry_at: None,
            refusals: 0,
        }
    }

    /// A new connection: everything is subscribed again, ahead of anything queued (the
    /// pending queue is served before the request channel and was just cleared).
    pub(super) fn connected(&mut self, pending: &mut VecDeque<Request>) {
        self.queued.clear();
        self.sent.clear();
        self.refused.clear();
        self.retry_at = None;
        self.refusals = 0;
        if !self.filters.is_empty() {
            pending.push_front(subscribe(&self.filters));
            self.queued.push_back(self.filters.clone());
        }
    }

    /// rumqttc sent a SUBSCRIBE with this packet id.
    pub(super) fn sent(&mut self, pkid: u16) {
        if let Some(filters) = self.queued.pop_front() {
            self.sent.insert(pkid, filters);
        }
    }

    /// A SUBACK: the refused filters wait for their next try (see [`Subscriptions::due`]).
    pub(super) fn acknowledged(&mut self, ack: &SubAck, now: Instant) {
        let filters = self.sent.remove(&ack.pkid).unwrap_or_default();
        let mut refused: Vec<String> = ack
            .return_codes
            .iter()
            .zip(&filters)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, filter)| filter.clone())
            .collect();
        if refused.is_empty() {
            if self.refusals > 0 && self.refused.is_empty() && self.queued.is_empty() {
                info!(
                    after = self.refusals,
                    "the broker accepted the subscriptions it had refused"
                );
                self.refusals = 0;
            }
            return;
        }
        self.refusals += 1;
        let retry_in = retry_delay(self.refusals);
        if self.refusals == 1 {
            warn!(topics = ?refused, ?retry_in, "the broker refused subscriptions; subscribing again");
        } else if self.refusals == REFUSALS_BEFORE_ACL_HINT {
            warn!(topics = ?refused, refusals = self.refusals, every = ?RETRY_MAX,
                "the broker keeps refusing subscriptions (ACL?); commands on those topics are not received until it accepts them");
        } else {
            debug!(topics = ?refused, refusals = self.refusals, ?retry_in, "the broker refused subscriptions again");
        }
        refused.retain(|filter| !self.refused.contains(filter));
        self.refused.extend(refused);
        self.retry_at = Some(now + retry_in);
    }

    /// Queues the refused filters again once their time has come.
    pub(super) fn due(&mut self, now: Instant, pending: &mut VecDeque<Request>) {
        if self.retry_at.is_some_and(|at| at <= now) && !self.refused.is_empty() {
            self.retry_at = None;
            let filters = std::mem::take(&mut self.refused);
            pending.push_back(subscribe(&filters));
            self.queued.push_back(filters);
        }
    }
}

fn subscribe(filters: &[String]) -> Request {
    let filters = filters
        .iter()
        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
    Request::Subscribe(Subscribe::new_many(filters))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(pkid: u16, codes: &[bool]) -> SubAck {
        let codes = codes
            .iter()
            .map(|ok| match ok {
                true => SubscribeReasonCode::Success(QoS::AtLeastOnce),
                false => SubscribeReasonCode::Failure,
            })
            .collect();
        SubAck::new(pkid, codes)
    }

    fn filters_of(request: &Request) -> Vec<String> {
        match request {
            Request::Subscribe(sub) => sub.filters.iter().map(|f| f.path.clone()).collect(),
            other => panic!("not a subscribe: {other:?}"),
        }
    }

    #[test]
    fn refused_filters_alone_are_sent_again_spaced_out_until_the_broker_takes_them() {
        let t0 = Instant::now();
        let mut subs = Subscriptions::new(vec!["a/+".into(), "b/#".into(), "c".into()]);
        let mut pending = VecDeque::new();
        subs.connected(&mut pending);
        assert_eq!(
            filters_of(&pending.pop_front().unwrap()),
            ["a/+", "b/#", "c"]
        );
        subs.sent(1);
        subs.acknowledged(&ack(1, &[true, false, true]), t0);
        // not at once: a broker that refuses at once would be asked in a hot loop
        subs.due(t0, &mut pending);
        assert!(pending.is_empty());
        // far more refusals than the old 8 immediate tries, each retried after its wait
        let mut at = t0;
        let mut waits = Vec::new();
        for pkid in 2..22u16 {
            let wait = retry_delay(pkid as u32 - 1);
            subs.due(at + wait - Duration::from_millis(1), &mut pending);
            assert!(pending.is_empty(), "retry {pkid} came early");
            at += wait;
            subs.due(at, &mut pending);
            assert_eq!(filters_of(&pending.pop_front().expect("a retry")), ["b/#"]);
            waits.push(wait.as_secs());
            subs.sent(pkid);
            subs.acknowledged(&ack(pkid, &[false]), at);
        }
        assert_eq!(&waits[..7], [1, 2, 4, 8, 16, 30, 30]);
        assert!(waits.iter().all(|w| *w <= RETRY_MAX.as_secs()));
        // the broker takes them at last: nothing more is queued
        at += RETRY_MAX;
        subs.due(at, &mut pending);
        assert_eq!(filters_of(&pending.pop_front().expect("a retry")), ["b/#"]);
        subs.sent(22);
        subs.acknowledged(&ack(22, &[true]), at);
        subs.due(at + RETRY_MAX * 10, &mut pending);
        assert!(pending.is_empty());
        // a new connection starts over with everything
        subs.connected(&mut pending);
        assert_eq!(filters_of(&pending[0]), ["a/+", "b/#", "c"]);
    }
}
