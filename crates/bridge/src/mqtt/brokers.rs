//! `mqtt.urls`: several endpoints of one broker service (a cluster's nodes), each with its
//! own connection options, tried in order and rotated on every failed attempt.
//!
//! rumqttc reads `EventLoop::mqtt_options` at every (re)connect, so switching brokers is
//! one assignment between two polls: the client, its request channel and everything
//! queued in it stay, and the publisher never notices beyond the usual `Disconnected` /
//! `Connected` pair (after which it republishes everything, as after any reconnect).

use rumqttc::MqttOptions;

use crate::config::{MqttBroker, MqttConfig};

/// The brokers in the order they are tried, and the one in use.
#[derive(Clone, Debug)]
pub struct Brokers {
    /// (URL as written, its options); never empty.
    list: Vec<(String, MqttOptions)>,
    current: usize,
}

impl Brokers {
    /// One entry per `mqtt.urls` (or the one `mqtt.url`), each from `options`.
    pub fn new(
        cfg: &MqttConfig,
        options: impl Fn(&MqttBroker) -> anyhow::Result<MqttOptions>,
    ) -> anyhow::Result<Brokers> {
        let list = cfg
            .brokers
            .iter()
            .map(|broker| Ok((broker.url.clone(), options(broker)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!list.is_empty(), "no MQTT broker configured");
        Ok(Brokers { list, current: 0 })
    }

    /// The options of the broker in use (to create the client with).
    pub fn options(&self) -> &MqttOptions {
        &self.list[self.current].1
    }

    /// The URL of the broker in use, as written in the config.
    pub fn url(&self) -> &str {
        &self.list[self.current].0
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Moves on to the next broker (after the last, the first again) and returns its URL.
    pub fn advance(&mut self) -> &str {
        self.current = (self.current + 1) % self.list.len();
        self.url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(urls: &str) -> MqttConfig {
        let toml = format!(
            "[proxmox]\nurl = \"https://pve.lan:8006\"\ntoken = \"a@pve!b=c\"\n[mqtt]\nurls = \"{urls}\"\n"
        );
        crate::config::Config::from_toml_str(&toml, &Default::default())
            .expect("valid config")
            .mqtt
    }

    #[test]
    fn brokers_are_tried_in_order_and_the_first_comes_again_after_the_last() {
        let cfg = config("mqtt://a:1883,mqtt://b:1884,mqtt://c:1885");
        let mut brokers =
            Brokers::new(&cfg, |b| Ok(MqttOptions::new("id", b.host.clone(), b.port))).unwrap();
        assert_eq!(brokers.url(), "mqtt://a:1883");
        assert_eq!(brokers.options().broker_address(), ("a".into(), 1883));
        assert_eq!(brokers.advance(), "mqtt://b:1884");
        assert_eq!(brokers.options().broker_address(), ("b".into(), 1884));
        assert_eq!(brokers.advance(), "mqtt://c:1885");
        assert_eq!(brokers.advance(), "mqtt://a:1883");
        assert_eq!(brokers.len(), 3);
    }
}
