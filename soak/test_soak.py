"""Tests of the soak's own parts, so a soak failure means the bridge and not the tool:
the minimal MQTT client against a real Mosquitto, and the power-state comparison.

    python3 -m unittest discover -s soak -p 'test_*.py'
"""

import shutil
import socket
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soak  # noqa: E402  (after the path tweak above)


class RemainingLength(unittest.TestCase):
    def test_boundaries_of_the_variable_length_encoding(self):
        # MQTT 3.1.1 §2.2.3, table 2.4.
        cases = {
            0: b"\x00",
            127: b"\x7f",
            128: b"\x80\x01",
            16383: b"\xff\x7f",
            16384: b"\x80\x80\x01",
            2097151: b"\xff\xff\x7f",
        }
        for n, encoded in cases.items():
            self.assertEqual(soak._remaining_length(n), encoded, n)


class ParsePublish(unittest.TestCase):
    def test_qos0_without_packet_id(self):
        body = soak._utf8("a/b") + b"payload"
        self.assertEqual(soak.parse_publish(0x0, body), ("a/b", b"payload", False, None))

    def test_qos1_retained_with_packet_id(self):
        body = soak._utf8("a/b") + b"\x01\x02" + b"{}"
        self.assertEqual(soak.parse_publish(0x3, body), ("a/b", b"{}", True, 258))


class SamePower(unittest.TestCase):
    def test_hibernated_vm_must_be_suspended(self):
        hibernated = {"status": "stopped", "lock": "suspended"}
        self.assertTrue(soak.same_power(hibernated, "suspended"))
        self.assertFalse(soak.same_power(hibernated, "stopped"))

    def test_paused_vm_may_show_running_or_paused(self):
        paused = {"status": "paused", "lock": None}
        self.assertTrue(soak.same_power(paused, "running"))
        self.assertTrue(soak.same_power(paused, "paused"))
        self.assertFalse(soak.same_power(paused, "stopped"))

    def test_plain_states_must_match(self):
        self.assertTrue(soak.same_power({"status": "running"}, "running"))
        self.assertFalse(soak.same_power({"status": "running"}, "stopped"))


@unittest.skipUnless(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists(),
                     "needs mosquitto")
class ClientAgainstMosquitto(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.broker = soak.Broker(Path(self.dir.name))

    def tearDown(self):
        self.broker.stop()
        self.dir.cleanup()

    def test_puback_retain_flag_and_live_delivery(self):
        publisher = soak.CommandPublisher(self.broker.port)
        self.assertTrue(publisher.publish("t/command", b"not retained"))
        connection = soak.MqttConnection(self.broker.port, "test-retain")
        connection._send(0x31, soak._utf8("t/retained") + b"one")  # QoS 0, retain
        connection.close()
        time.sleep(0.2)
        # The retained copy arrives with the retain flag at subscribe time...
        retained = soak.read_retained(self.broker.port, "t/#", 0.5)
        self.assertEqual(retained, {"t/retained": b"one"})
        # ...and a live message to a subscriber arrives without it.
        observer = soak.Observer(time.monotonic())
        subscriber = soak.Subscriber(self.broker.port, observer)
        subscriber.start()
        try:
            deadline = time.monotonic() + 5
            while not observer.subscriber_connects and time.monotonic() < deadline:
                time.sleep(0.02)
            connection = soak.MqttConnection(self.broker.port, "test-pub")
            connection._send(0x31, soak._utf8("pve2mqtt/bridge/state") + b"online")
            connection.close()
            deadline = time.monotonic() + 5
            while not observer.bridge_state and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(len(observer.bridge_state), 1)
            _, value, retain = observer.bridge_state[0]
            self.assertEqual((value, retain), ("online", False))
        finally:
            subscriber.stop()
            publisher.close()

    def test_publish_is_not_acknowledged_while_the_broker_is_down(self):
        publisher = soak.CommandPublisher(self.broker.port)
        self.assertTrue(publisher.publish("t/x", b"before"))
        self.broker.kill()
        self.assertFalse(publisher.publish("t/x", b"during"))
        self.broker.start()
        self.assertTrue(publisher.publish("t/x", b"after"))
        publisher.close()

    def test_free_port_is_bindable(self):
        port = soak.free_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


if __name__ == "__main__":
    unittest.main()
