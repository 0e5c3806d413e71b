//! The bridge's subscriptions on one connection: sent ahead of anything queued on every
//! ConnAck, and the refused ones sent again a few times.
//!
//! A broker cluster that just lost a node can refuse a subscription for a while: NATS
//! keeps each QoS 1 subscription as a JetStream consumer, and until the cluster has
//! elected new leaders it answers the SUBSCRIBE with a failure. Without a retry the
//! bridge would say `online` and be deaf to commands until the next reconnect. A refusal
//! that persists (an ACL) is logged with the topics and left alone.

use std::collections::{HashMap, VecDeque};

use rumqttc::{QoS, Request, SubAck, Subscribe, SubscribeFilter, SubscribeReasonCode};
use tracing::warn;

/// How many times refused subscriptions are sent again per connection. Brokers answer an
/// ACL refusal at once and a cluster in election after its own timeout (NATS: 4 s), so a
/// few tries cover an election without looping on an ACL.
pub const SUBSCRIBE_RETRIES: u32 = 8;

pub(super) struct Subscriptions {
    filters: Vec<String>,
    /// Filter lists queued, in the order rumqttc sends them.
    queued: VecDeque<Vec<String>>,
    /// Filter lists sent, by packet id, until their SUBACK.
    sent: HashMap<u16, Vec<String>>,
    retries: u32,
}

impl Subscriptions {
    pub(super) fn new(filters: Vec<String>) -> Subscriptions {
        Subscriptions {
            filters,
            queued: VecDeque::new(),
            sent: HashMap::new(),
            retries: 0,
        }
    }

    /// A new connection: everything is subscribed again, ahead of anything queued (the
    /// pending queue is served before the request channel and was just cleared).
    pub(super) fn connected(&mut self, pending: &mut VecDeque<Request>) {
        self.queued.clear();
        self.sent.clear();
        self.retries = 0;
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

    /// A SUBACK: the refused filters are sent again (behind what is pending), up to
    /// [`SUBSCRIBE_RETRIES`] times per connection.
    pub(super) fn acknowledged(&mut self, ack: &SubAck, pending: &mut VecDeque<Request>) {
        let filters = self.sent.remove(&ack.pkid).unwrap_or_default();
        let refused: Vec<String> = ack
            .return_codes
            .iter()
            .zip(&filters)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, filter)| filter.clone())
            .collect();
        if refused.is_empty() {
            return;
        }
        if self.retries < SUBSCRIBE_RETRIES {
            self.retries += 1;
            warn!(topics = ?refused, attempt = self.retries, "the broker refused subscriptions; subscribing again");
            pending.push_back(subscribe(&refused));
            self.queued.push_back(refused);
        } else {
            warn!(topics = ?refused, "the broker refused subscriptions (ACL?); commands on those topics are not received");
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
    fn refused_filters_alone_are_sent_again_a_bounded_number_of_times() {
        let mut subs = Subscriptions::new(vec!["a/+".into(), "b/#".into(), "c".into()]);
        let mut pending = VecDeque::new();
        subs.connected(&mut pending);
        assert_eq!(
            filters_of(&pending.pop_front().unwrap()),
            ["a/+", "b/#", "c"]
        );
        subs.sent(1);
        subs.acknowledged(&ack(1, &[true, false, true]), &mut pending);
        let again = pending.pop_front().expect("a retry");
        assert_eq!(filters_of(&again), ["b/#"]);
        for pkid in 2..2 + SUBSCRIBE_RETRIES as u16 {
            subs.sent(pkid);
            subs.acknowledged(&ack(pkid, &[false]), &mut pending);
            let _ = pending.pop_front();
        }
        // given up: nothing more queued
        assert!(pending.is_empty());
        // a new connection starts over with everything
        subs.connected(&mut pending);
        assert_eq!(filters_of(&pending[0]), ["a/+", "b/#", "c"]);
    }
}
