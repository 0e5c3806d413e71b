#!/usr/bin/env python3
"""Soak test of pve2mqtt (issue 4): the real bridge binary against the simulator and a
private Mosquitto, for minutes of wall time, with random commands and random faults.

Why a separate script and not a cargo test: it runs for minutes, restarts processes by
PID (the broker, the bridge itself) and measures the bridge's RSS from /proc, none of which
belongs in the normal test run. Python 3.11 standard library only, so it runs anywhere the
project builds; the MQTT client is a minimal MQTT 3.1.1 implementation below, because we
must know exactly which PUBLISH the broker acknowledged and which messages carried the
retain flag (a library would hide both).

What it checks (exit status 1 if any fails):
- every command whose publish the broker acknowledged (QoS 1 PUBACK) gets exactly one
  final result (`ok`, `failed` or `rejected`) on its guest's retained `.../task` topic;
  commands that may legitimately have none are counted apart, each with its reason
  (sent while the bridge had no subscription, in flight at the bridge restart, a task the
  simulator was told to hang);
- no command id gets two different final results, and an identical final result is
  delivered again only after a broker or bridge restart (the bridge restores retained
  task topics on a new broker; a connected subscriber sees that live);
- the bridge never exits on its own, and stops with exit code 0 on SIGTERM;
- the bridge comes back `online` after every broker restart and after its own restart,
  and `pve2mqtt/bridge/state` is `online` at the end;
- at the end, every guest's retained state shows the node and power state the simulator
  has (the bridge converged after all the faults).

Run it through `scripts/soak.sh` (builds the binary first). See `soak/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE = "pve2mqtt"
CLUSTER = "simcluster"  # the simulator's generated cluster name, used as the topic id
TOKEN = "root@pam!pve2mqtt=5ec12e7a-0000-4000-8000-000000000001"
FINAL_STATES = ("ok", "failed", "rejected")
# The bridge follows a lifecycle task for 15 minutes before giving up (handler.rs
# `deadline`); a task the simulator hangs therefore has no final result within a soak.
HUNG_TASK_DEADLINE = "15 min"


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


# ---------------------------------------------------------------------------------------
# A minimal MQTT 3.1.1 client: CONNECT (clean session), SUBSCRIBE, PUBLISH QoS 0/1 with
# PUBACK. Blocking sockets; a read timeout never loses a partly read packet.
# ---------------------------------------------------------------------------------------


class MqttClosed(Exception):
    """The broker closed the connection or refused it."""


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


class MqttConnection:
    def __init__(self, port: int, client_id: str, timeout: float = 2.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.next_packet_id = 0
        # Protocol level 4, clean session, keep-alive 0: the broker never times us out;
        # a killed broker is noticed through the socket closing.
        header = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)
        self._send(0x10, header + _utf8(client_id))
        kind, _, body = self.read_packet(timeout)
        if kind != 2 or len(body) < 2 or body[1] != 0:
            self.close()
            raise MqttClosed(f"CONNACK refused: {body!r}")

    def _send(self, first_byte: int, body: bytes) -> None:
        self.sock.sendall(bytes([first_byte]) + _remaining_length(len(body)) + body)

    def _fill(self, size: int, deadline: float | None) -> None:
        while len(self.buffer) < size:
            if deadline is None:
                self.sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("MQTT read timed out")
                self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise MqttClosed("connection closed by the broker")
            self.buffer += chunk

    def read_packet(self, timeout: float | None) -> tuple[int, int, bytes]:
        """(packet type, flags, body); raises TimeoutError with the buffer intact."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._fill(2, deadline)
        length, multiplier, pos = 0, 1, 1
        while True:
            self._fill(pos + 1, deadline)
            byte = self.buffer[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
        self._fill(pos + length, deadline)
        first = self.buffer[0]
        body = self.buffer[pos : pos + length]
        self.buffer = self.buffer[pos + length :]
        return first >> 4, first & 0x0F, body

    def _packet_id(self) -> int:
        self.next_packet_id = self.next_packet_id % 65535 + 1
        return self.next_packet_id

    def subscribe(self, filters: list[str], timeout: float = 5.0) -> None:
        packet_id = self._packet_id()
        body = struct.pack("!H", packet_id)
        for topic_filter in filters:
            body += _utf8(topic_filter) + bytes([1])
        self._send(0x82, body)
        deadline = time.monotonic() + timeout
        while True:
            kind, _, reply = self.read_packet(max(0.01, deadline - time.monotonic()))
            if kind == 9 and struct.unpack("!H", reply[:2])[0] == packet_id:
                if any(code == 0x80 for code in reply[2:]):
                    raise MqttClosed("subscription refused")
                return

    def publish_qos1(self, topic: str, payload: bytes, timeout: float = 3.0) -> bool:
        """True only when the broker's PUBACK for this message arrived."""
        packet_id = self._packet_id()
        self._send(0x32, _utf8(topic) + struct.pack("!H", packet_id) + payload)
        deadline = time.monotonic() + timeout
        while True:
            kind, _, reply = self.read_packet(max(0.01, deadline - time.monotonic()))
            if kind == 4 and struct.unpack("!H", reply[:2])[0] == packet_id:
                return True

    def puback(self, packet_id: int) -> None:
        self._send(0x40, struct.pack("!H", packet_id))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def parse_publish(flags: int, body: bytes) -> tuple[str, bytes, bool, int | None]:
    """(topic, payload, retain, packet id for QoS 1/2)."""
    topic_len = struct.unpack("!H", body[:2])[0]
    topic = body[2 : 2 + topic_len].decode(errors="replace")
    pos = 2 + topic_len
    packet_id = None
    if (flags >> 1) & 3:
        packet_id = struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 2
    return topic, body[pos:], bool(flags & 1), packet_id


# ---------------------------------------------------------------------------------------
# What we observe: every command we sent and every message about it.
# ---------------------------------------------------------------------------------------


@dataclass
class Command:
    id: str
    vmid: int
    kind: str
    action: str
    sent_at: float
    acked: bool = False
    purpose: str = "random"  # or "fail", "warnings", "hang": sent right after an override
    # (time, state, retain) of every task message carrying this id.
    states: list = field(default_factory=list)
    # (time, payload text, retain) of every final message carrying this id.
    finals: list = field(default_factory=list)
    upid: str | None = None


@dataclass
class BrokerRestart:
    killed_at: float
    up_at: float | None = None
    bridge_online_at: float | None = None


@dataclass
class BridgeRestart:
    sigterm_at: float
    exited_at: float | None = None
    exit_code: int | None = None
    started_at: float | None = None
    bridge_online_at: float | None = None
    rss_before_kb: int | None = None
    # Final results the stopping bridge logged ("the bridge stopped while the task was
    # running") and whether any of them reached MQTT.
    stop_results_logged: int = 0
    stop_results_published: int = 0
    # Commands without a final result at SIGTERM whose retained `.../task` still says
    # accepted/running some seconds after the new bridge is online, their task long over.
    stuck_after_restart: list = field(default_factory=list)


class Observer:
    """Fed by the subscriber thread; read by the main thread under the same lock."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.lock = threading.Lock()
        self.commands: dict[str, Command] = {}
        self.bridge_state: list[tuple[float, str, bool]] = []
        self.unknown_ids: list[str] = []
        self.cleared_task_topics = 0
        self.non_json = 0
        self.task_messages = 0
        self.regressions: list[str] = []
        self.subscriber_connects: list[float] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        t = self.now()
        with self.lock:
            if topic == f"{BASE}/bridge/state":
                self.bridge_state.append((t, payload.decode(errors="replace"), retain))
                return
            if not topic.endswith("/task"):
                return
            self.task_messages += 1
            if not payload:
                self.cleared_task_topics += 1  # a guest vanished: its retained topics cleared
                return
            try:
                report = json.loads(payload)
            except ValueError:
                self.non_json += 1
                return
            command = self.commands.get(report.get("id"))
            if command is None:
                self.unknown_ids.append(str(report.get("id")))
                return
            state = report.get("state")
            if (
                state not in FINAL_STATES
                and not retain
                and any(not f[2] for f in command.finals)
            ):
                self.regressions.append(f"{command.id}: '{state}' after a final result")
            command.states.append((t, state, retain))
            if report.get("upid"):
                command.upid = report["upid"]
            if state in FINAL_STATES:
                command.finals.append((t, payload.decode(errors="replace"), retain))

    def online_after(self, since: float) -> float | None:
        """When `online` was first seen on bridge/state after `since`."""
        with self.lock:
            for t, value, _ in self.bridge_state:
                if t > since and value == "online":
                    return t
        return None

    def last_bridge_state(self) -> str | None:
        with self.lock:
            return self.bridge_state[-1][1] if self.bridge_state else None


class Subscriber(threading.Thread):
    """Subscribes to task results and the bridge state; reconnects every 50 ms while the
    broker is away, so it is normally back before the bridge (whose backoff is >= 1 s)."""

    def __init__(self, port: int, observer: Observer):
        super().__init__(daemon=True)
        self.port = port
        self.observer = observer
        self.stopping = threading.Event()
        self.connection: MqttConnection | None = None

    def run(self) -> None:
        filters = [f"{BASE}/{CLUSTER}/+/+/task", f"{BASE}/bridge/state"]
        while not self.stopping.is_set():
            try:
                self.connection = MqttConnection(self.port, f"soak-sub-{os.getpid()}")
                self.connection.subscribe(filters)
                self.observer.subscriber_connects.append(self.observer.now())
                while not self.stopping.is_set():
                    try:
                        kind, flags, body = self.connection.read_packet(0.5)
                    except TimeoutError:
                        continue
                    if kind != 3:
                        continue
                    topic, payload, retain, packet_id = parse_publish(flags, body)
                    if packet_id is not None:
                        self.connection.puback(packet_id)
                    self.observer.on_message(topic, payload, retain)
            except (OSError, MqttClosed):
                pass
            finally:
                if self.connection is not None:
                    self.connection.close()
                    self.connection = None
            self.stopping.wait(0.05)

    def stop(self) -> None:
        self.stopping.set()
        if self.connection is not None:
            self.connection.close()


class CommandPublisher:
    """One connection used only to publish commands with QoS 1; reconnects lazily. A
    command counts as sent only when its PUBACK arrived."""

    def __init__(self, port: int):
        self.port = port
        self.connection: MqttConnection | None = None

    def publish(self, topic: str, payload: bytes) -> bool:
        try:
            if self.connection is None:
                self.connection = MqttConnection(self.port, f"soak-pub-{os.getpid()}", 1.0)
            return self.connection.publish_qos1(topic, payload)
        except (OSError, MqttClosed):
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            return False

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


# ---------------------------------------------------------------------------------------
# The processes: simulator, broker, bridge.
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Simulator:
    def __init__(self, binary: str, workdir: Path, guests: int, nodes: int):
        self.port = free_port()
        self.log = open(workdir / "sim.log", "wb")
        self.process = subprocess.Popen(
            [
                binary, "sim", "--listen", f"127.0.0.1:{self.port}", "--tls",
                "--nodes", str(nodes), "--guests", str(guests), "--token", TOKEN,
                "--task-duration", "300ms", "--auth-delay", "50ms", "--offline-delay", "500ms",
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.fingerprint = None
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode().strip()
            self.log.write(raw)
            if line.startswith("fingerprint:"):
                self.fingerprint = line.split(":", 1)[1].strip()
                break
        if not self.fingerprint:
            raise RuntimeError("the simulator printed no certificate fingerprint")
        self.base = f"https://127.0.0.1:{self.port}"
        # The control API is plain JSON over the simulator's self-signed HTTPS.
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=10) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"sim {method} {path}: {error.code} {error.read()!r}") from None
        return json.loads(text) if text else None

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


class Broker:
    """A private Mosquitto (no persistence: a restart loses every retained message, the
    harshest case for the bridge), killed and restarted on the same port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.log = open(workdir / "mosquitto.log", "wb")
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=self.log, stderr=self.log
        )
        if not wait_listening(self.port, 10):
            raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def kill(self) -> None:
        """SIGKILL, like a crash: no Last Will handling, no clean disconnects."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        self.log.close()


class BridgeProcess:
    def __init__(self, binary: str, config: Path, workdir: Path):
        self.binary = binary
        self.config = config
        self.log = open(workdir / "bridge.log", "wb")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.write(f"\n===== soak: bridge started at {time.ctime()} =====\n".encode())
        self.log.flush()
        self.process = subprocess.Popen(
            [self.binary, "run", "--config", str(self.config)],
            stdout=self.log,
            stderr=self.log,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def terminate(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self.process = None
        return code


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------
# The soak itself.
# ---------------------------------------------------------------------------------------

QEMU_ACTIONS = {
    "start": 3, "stop": 2, "shutdown": 2, "reboot": 2, "suspend": 1, "resume": 1,
    "reset": 1, "hibernate": 0.5, "backup": 0.5,
}
LXC_ACTIONS = {
    "start": 3, "stop": 2, "shutdown": 2, "reboot": 2, "suspend": 1, "resume": 1,
    "backup": 0.5,
}
FAULT_WEIGHTS = {
    "500 on /cluster/resources": 3,
    "500 on /nodes": 1,
    "slow /cluster/resources": 2,
    "slow /nodes": 1,
    "dropped connection": 2,
    "node offline": 1.5,
    "guest migrated": 2,
    "guest deleted and re-added": 1.5,
    "task fails": 2,
    "task ends with warnings": 1,
}


def weighted(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.duration = args.minutes * 60
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pve2mqtt-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.observer = Observer(self.t0)
        self.events_log = open(self.workdir / "events.log", "w")
        self.failures: list[str] = []
        self.faults: dict[str, int] = {}
        self.broker_restarts: list[BrokerRestart] = []
        self.bridge_restarts: list[BridgeRestart] = []
        self.rss: list[tuple[float, int, int]] = []  # (t, pid, kB)
        self.queue: list[tuple[float, int, str, object]] = []
        self.sequence = 0
        self.command_counter = 0
        self.not_acked = 0
        self.guests: dict[int, dict] = {}
        self.deleted: set[int] = set()
        self.offline_node: str | None = None
        self.hangs_left = args.hangs
        self.sim: Simulator | None = None
        self.broker: Broker | None = None
        self.bridge: BridgeProcess | None = None
        self.subscriber: Subscriber | None = None
        self.publisher: CommandPublisher | None = None
        self.bridge_expected_down = False
        # True while the bridge reconnects after a restart: random commands are held back.
        self.holding = False
        self.held = 0
        self.stop_failures_seen = 0
        self.nodes: list[str] = []
        # Seconds since t0: when the schedule started, when it is due to end, when it did.
        self.started_at = 0.0
        self.end_at = 0.0
        self.end_commands_at = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        line = f"{self.now():8.2f}s {text}"
        self.events_log.write(line + "\n")
        self.events_log.flush()
        if self.args.verbose:
            log(line)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        log(f"INVARIANT FAILED: {text}")
        self.event(f"FAILURE {text}")

    def schedule(self, at: float, name: str, payload: object = None) -> None:
        self.sequence += 1
        heapq.heappush(self.queue, (at, self.sequence, name, payload))

    # --- setup -------------------------------------------------------------------------

    def start(self) -> None:
        log(f"work dir {self.workdir} (logs: bridge.log, events.log, sim.log, mosquitto.log)")
        self.sim = Simulator(self.args.binary, self.workdir, self.args.guests, self.args.nodes)
        self.broker = Broker(self.workdir)
        config = self.workdir / "pve2mqtt.toml"
        config.write_text(
            f"""[proxmox]
url = "{self.sim.base}"
token = "{TOKEN}"
fingerprint = "{self.sim.fingerprint}"
timeout = "5s"

[poll]
interval = "1s"
slow_interval = "5s"

[mqtt]
url = "mqtt://127.0.0.1:{self.broker.port}"
client_id = "pve2mqtt-soak"
"""
        )
        world = self.sim.call("GET", "/_sim/world")
        for guest in world["guests"]:
            self.guests[guest["vmid"]] = guest
        self.nodes = [node["name"] for node in world["nodes"]]
        self.subscriber = Subscriber(self.broker.port, self.observer)
        self.subscriber.start()
        self.publisher = CommandPublisher(self.broker.port)
        self.bridge = BridgeProcess(self.args.binary, config, self.workdir)
        self.bridge.start()
        log(
            f"simulator {self.sim.base} ({len(self.nodes)} nodes, {len(self.guests)} guests), "
            f"mosquitto :{self.broker.port}, bridge pid {self.bridge.pid}"
        )
        if not self.wait_online(since=0, timeout=30):
            raise RuntimeError("the bridge did not come online within 30 s (see bridge.log)")
        # Let the first polls publish every guest before measuring the starting RSS.
        time.sleep(3)
        self.sample_rss("start")

    def wait_online(self, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.observer.online_after(since)
            if seen is not None:
                return seen
            self.check_bridge_alive()
            self.run_due_commands()
            time.sleep(0.05)
        return None

    # --- the schedule ------------------------------------------------------------------

    def plan(self) -> None:
        """Everything is scheduled up front from the seed, except commands (Poisson)."""
        start = self.now()
        end = start + self.duration
        self.started_at = start
        self.end_at = end
        self.schedule(start, "command")
        self.schedule(start + self.rng.uniform(3, 8), "fault")
        self.schedule(start + 60, "rss")
        bridge_at = start + self.duration / 2
        broker_times = []
        t = start + self.args.broker_every * self.rng.uniform(0.85, 1.15)
        while t < end - 20:
            # Keep broker and bridge restarts apart so their effects stay tellable apart.
            if abs(t - bridge_at) < 15:
                t = bridge_at + 15
            broker_times.append(t)
            t += self.args.broker_every * self.rng.uniform(0.85, 1.15)
        for t in broker_times:
            self.schedule(t, "broker restart")
        self.schedule(bridge_at, "bridge restart")
        # Hung tasks only after the bridge restart: a hang before it would be cut short by
        # the restart and counted as "in flight at the bridge restart" instead.
        for i in range(self.hangs_left):
            span = end - 15 - (bridge_at + 10)
            self.schedule(bridge_at + 10 + span * (i + 1) / (self.hangs_left + 1), "hang")
        log(
            f"plan: {self.duration:.0f} s, ~{self.args.rate}/s commands, a fault every 4-10 s, "
            f"broker restarts at {', '.join(f'{t:.0f}' for t in broker_times)} s, "
            f"bridge restart at {bridge_at:.0f} s, {self.hangs_left} hung task(s)"
        )

    def run(self) -> None:
        self.plan()
        while self.queue:
            at, _, name, payload = self.queue[0]
            if at > self.end_at:
                break
            now = self.now()
            if at > now:
                time.sleep(min(at - now, 0.05))
                self.check_bridge_alive()
                continue
            heapq.heappop(self.queue)
            self.handler(name)(payload)
        # Undo whatever is still pending (a node offline, a guest deleted).
        for at, _, name, payload in sorted(self.queue):
            if name in ("node online", "guest re-add"):
                self.handler(name)(payload)
        self.queue.clear()

    def handler(self, name: str):
        """The `do_...` method for a scheduled event name ("guest re-add" -> do_guest_re_add)."""
        return getattr(self, "do_" + name.replace(" ", "_").replace("-", "_"))

    def check_bridge_alive(self) -> None:
        if self.bridge is None or self.bridge_expected_down:
            return
        code = self.bridge.exited()
        if code is not None:
            self.fail(f"the bridge exited on its own with code {code} at {self.now():.1f} s")
            self.bridge.start()  # keep soaking; the failure is recorded
            self.event(f"bridge restarted after its own exit, pid {self.bridge.pid}")

    def sample_rss(self, label: str) -> int | None:
        if self.bridge is None or self.bridge.pid is None:
            return None
        kb = rss_kb(self.bridge.pid)
        if kb is not None:
            self.rss.append((self.now(), self.bridge.pid, kb))
            log(f"RSS {label}: {kb / 1024:.1f} MiB (pid {self.bridge.pid}, t={self.now():.0f} s)")
        return kb

    # --- commands ----------------------------------------------------------------------

    def pending_vmids(self) -> set[int]:
        """Guests with a command of ours still waiting for its final result."""
        with self.observer.lock:
            return {c.vmid for c in self.observer.commands.values() if c.acked and not c.finals}

    def send_command(self, vmid: int, action: str, purpose: str = "random") -> Command:
        kind = self.guests[vmid]["type"]
        self.command_counter += 1
        command_id = f"soak-{self.args.seed}-{self.command_counter:06d}"
        command = Command(command_id, vmid, kind, action, self.now(), purpose=purpose)
        with self.observer.lock:
            self.observer.commands[command_id] = command
        topic = f"{BASE}/{CLUSTER}/{kind}/{vmid}/set"
        payload = json.dumps({"action": action, "id": command_id}).encode()
        assert self.publisher is not None
        acked = self.publisher.publish(topic, payload)
        with self.observer.lock:
            command.acked = acked
        if not acked:
            self.not_acked += 1
        self.event(f"command {command_id} {action} {kind}/{vmid} ({purpose}) acked={acked}")
        return command

    def do_command(self, _payload) -> None:
        self.schedule(self.now() + self.rng.expovariate(self.args.rate), "command")
        if self.holding:
            self.held += 1
            return
        vmid = self.rng.choice(sorted(self.guests))
        actions = QEMU_ACTIONS if self.guests[vmid]["type"] == "qemu" else LXC_ACTIONS
        self.send_command(vmid, weighted(self.rng, actions))

    # --- faults ------------------------------------------------------------------------

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def add_fault(self, kind: str, fault: dict) -> None:
        assert self.sim is not None
        self.sim.call("POST", "/_sim/faults", fault)
        self.count_fault(kind)
        self.event(f"fault {kind}: {json.dumps(fault)}")

    def do_fault(self, _payload) -> None:
        self.schedule(self.now() + self.rng.uniform(4, 10), "fault")
        kind = weighted(self.rng, FAULT_WEIGHTS)
        if kind == "node offline" and self.offline_node is not None:
            kind = "500 on /cluster/resources"  # one node offline at a time
        rng = self.rng
        if kind == "500 on /cluster/resources":
            self.add_fault(kind, {"path_prefix": "/cluster/resources", "kind": "status",
                                  "status": 500, "count": rng.randint(2, 5)})
        elif kind == "500 on /nodes":
            # Hits node status polls, lifecycle POSTs and task status reads alike.
            self.add_fault(kind, {"path_prefix": "/nodes", "kind": "status",
                                  "status": 500, "count": rng.randint(1, 4)})
        elif kind == "slow /cluster/resources":
            # Sometimes beyond the bridge's 5 s timeout.
            self.add_fault(kind, {"path_prefix": "/cluster/resources", "kind": "slow",
                                  "delay_ms": rng.choice([800, 2000, 4000, 6500]),
                                  "count": rng.randint(1, 3)})
        elif kind == "slow /nodes":
            self.add_fault(kind, {"path_prefix": "/nodes", "kind": "slow",
                                  "delay_ms": rng.choice([500, 1500, 3000]),
                                  "count": rng.randint(1, 4)})
        elif kind == "dropped connection":
            self.add_fault(kind, {"path_prefix": rng.choice(["/cluster/resources", "/nodes"]),
                                  "kind": "drop", "count": rng.randint(1, 3)})
        elif kind == "node offline":
            node = rng.choice(self.nodes)
            self.sim_call("POST", f"/_sim/nodes/{node}", {"online": False})
            self.offline_node = node
            self.count_fault(kind)
            seconds = rng.uniform(5, 15)
            self.event(f"fault node offline: {node} for {seconds:.1f} s")
            self.schedule(self.now() + seconds, "node online", node)
        elif kind == "guest migrated":
            vmid = rng.choice(sorted(set(self.guests) - self.deleted))
            world = self.world_guest(vmid)
            if world is None:
                return
            target = rng.choice([n for n in self.nodes if n != world["node"]])
            if self.sim_call("POST", f"/_sim/guests/{vmid}/migrate", {"target": target}):
                self.count_fault(kind)
                self.event(f"fault guest migrated: {vmid} {world['node']} -> {target}")
        elif kind == "guest deleted and re-added":
            vmid = rng.choice(sorted(set(self.guests) - self.deleted))
            world = self.world_guest(vmid)
            if world is None:
                return
            if self.sim_call("DELETE", f"/_sim/guests/{vmid}"):
                self.deleted.add(vmid)
                self.count_fault(kind)
                seconds = rng.uniform(4, 12)
                self.event(f"fault guest deleted: {vmid} on {world['node']}, back in {seconds:.1f} s")
                self.schedule(self.now() + seconds, "guest re-add", world)
        elif kind in ("task fails", "task ends with warnings"):
            outcome = "fail" if kind == "task fails" else "warnings"
            self.override_and_command(kind, outcome)

    def sim_call(self, method: str, path: str, body: dict | None = None) -> bool:
        assert self.sim is not None
        try:
            self.sim.call(method, path, body)
            return True
        except RuntimeError as error:
            self.event(f"sim control call refused: {error}")
            return False

    def world_guest(self, vmid: int) -> dict | None:
        assert self.sim is not None
        for guest in self.sim.call("GET", "/_sim/world")["guests"]:
            if guest["vmid"] == vmid:
                return guest
        return None

    def override_and_command(self, kind: str, outcome: str) -> bool:
        """Makes the next task of an idle guest fail/hang/warn, then commands that guest
        with an action that starts a task in its current state."""
        busy = self.pending_vmids()
        candidates = [
            v for v in sorted(set(self.guests) - self.deleted)
            if v not in busy and not self.guests[v].get("hastate")
        ]
        if not candidates:
            return False
        vmid = self.rng.choice(candidates)
        world = self.world_guest(vmid)
        if world is None:
            return False
        action = {"running": "reboot", "stopped": "start", "paused": "resume"}.get(
            world["status"], "start"
        )
        self.sim_call("POST", "/_sim/tasks/next", {"vmid": vmid, "outcome": outcome})
        self.count_fault(kind)
        self.event(f"fault {kind}: next task of {vmid} -> {outcome}")
        self.send_command(vmid, action, purpose=outcome)
        return True

    def do_hang(self, _payload) -> None:
        if self.override_and_command("task hangs", "hang"):
            self.hangs_left -= 1

    def do_node_online(self, node: str) -> None:
        self.sim_call("POST", f"/_sim/nodes/{node}", {"online": True})
        self.offline_node = None
        self.event(f"node online again: {node}")

    def do_guest_re_add(self, world: dict) -> None:
        body = {"vmid": world["vmid"], "type": world["type"], "node": world["node"],
                "name": world["name"], "status": world["status"]}
        if world.get("tags"):
            body["tags"] = world["tags"]
        if world.get("pool"):
            body["pool"] = world["pool"]
        if world.get("hastate"):
            body["hastate"] = world.get("ha_request") or world["hastate"]
        if self.sim_call("POST", "/_sim/guests", body):
            self.deleted.discard(world["vmid"])
            self.event(f"guest re-added: {world['vmid']} on {world['node']}")

    def do_rss(self, _payload) -> None:
        self.sample_rss(f"minute {round(self.now() / 60)}")
        self.schedule(self.now() + 60, "rss")

    # --- restarts ----------------------------------------------------------------------

    def do_broker_restart(self, _payload) -> None:
        assert self.broker is not None
        down = self.rng.uniform(1, 4)
        restart = BrokerRestart(killed_at=self.now())
        self.broker.kill()
        self.event(f"broker killed (down for {down:.1f} s)")
        # Commands keep flowing meanwhile: their publishes fail (not acknowledged).
        end = time.monotonic() + down
        while time.monotonic() < end:
            self.run_due_commands()
            time.sleep(0.02)
        self.broker.start()
        restart.up_at = self.now()
        self.broker_restarts.append(restart)
        self.event("broker up again")
        # Until the bridge is subscribed again the broker would accept commands and drop
        # them (no session): hold the random ones, send one probe to show what happens.
        self.holding = True
        self.send_probe()
        restart.bridge_online_at = self.wait_online(restart.up_at, 60)
        self.holding = False
        if restart.bridge_online_at is None:
            self.fail(f"the bridge did not come back online within 60 s of broker restart #{len(self.broker_restarts)}")
        back = f"{restart.bridge_online_at - restart.up_at:.1f} s" if restart.bridge_online_at else "never"
        log(f"broker restart #{len(self.broker_restarts)} (down {down:.1f} s, bridge online again after {back})")

    def send_probe(self) -> None:
        """One command published while the bridge has no subscription (SPEC §4 and
        mqtt/mod.rs: clean session, so a stale command is never replayed)."""
        vmid = self.rng.choice(sorted(set(self.guests) - self.deleted))
        self.send_command(vmid, "start", purpose="no-session probe")

    def run_due_commands(self) -> None:
        """While a restart blocks the main loop, commands that fall due still go out."""
        deferred = []
        while self.queue and self.queue[0][0] <= self.now():
            item = heapq.heappop(self.queue)
            if item[2] == "command":
                self.do_command(None)
            else:
                deferred.append(item)  # faults etc. wait for the main loop
        for item in deferred:
            heapq.heappush(self.queue, item)

    def do_bridge_restart(self, _payload) -> None:
        assert self.bridge is not None
        restart = BridgeRestart(sigterm_at=self.now())
        restart.rss_before_kb = self.sample_rss("before the bridge restart")
        self.bridge_expected_down = True
        self.holding = True
        restart.sigterm_at = self.now()
        with self.observer.lock:
            in_flight = [
                c for c in self.observer.commands.values()
                if c.acked and not c.finals and c.states
            ]
        code = self.bridge.terminate()
        restart.exited_at = self.now()
        restart.stop_results_logged = self.new_stop_failures()
        restart.exit_code = code
        self.event(f"bridge SIGTERM -> exit code {code} after {restart.exited_at - restart.sigterm_at:.1f} s")
        if code != 0:
            self.fail(f"the bridge exited with code {code} on SIGTERM (expected 0)")
        self.send_probe()
        self.bridge.start()
        restart.started_at = self.now()
        self.bridge_restarts.append(restart)
        self.bridge_expected_down = False
        log(f"bridge restarted (SIGTERM exit code {code}), new pid {self.bridge.pid}")
        restart.bridge_online_at = self.wait_online(restart.started_at, 30)
        self.holding = False
        if restart.bridge_online_at is None:
            self.fail("the restarted bridge did not come online within 30 s")
        self.sample_rss("after the bridge restart")
        self.schedule(self.now() + 8, "check in flight", (restart, in_flight))

    def new_stop_failures(self) -> int:
        """How many more "the bridge stopped while the task was running" results the
        bridge has logged since the last call."""
        assert self.bridge is not None
        self.bridge.log.flush()
        text = (self.workdir / "bridge.log").read_text(errors="replace")
        total = text.count("the bridge stopped while the task was running")
        new, self.stop_failures_seen = total - self.stop_failures_seen, total
        return new

    def do_check_in_flight(self, payload) -> None:
        """Commands in flight at the bridge restart: did their end reach MQTT, and what
        does their guest's retained `.../task` say now that their task is over?"""
        restart, in_flight = payload
        running = self.hung_upids()
        assert self.broker is not None
        retained = read_retained(self.broker.port, f"{BASE}/{CLUSTER}/+/+/task", 1.0)
        with self.observer.lock:
            for c in in_flight:
                if any("the bridge stopped" in p for _, p, _ in c.finals):
                    restart.stop_results_published += 1
                payload_now = retained.get(f"{BASE}/{CLUSTER}/{c.kind}/{c.vmid}/task", b"")
                report = json.loads(payload_now) if payload_now else {}
                if (
                    report.get("id") == c.id
                    and report.get("state") not in FINAL_STATES
                    and c.upid not in running
                ):
                    restart.stuck_after_restart.append(
                        f"{c.kind}/{c.vmid} id={c.id} {c.action} retained state={report.get('state')}"
                    )
        self.event(
            f"in flight at the bridge restart: {len(in_flight)}; stuck retained: "
            f"{restart.stuck_after_restart}; stop results logged {restart.stop_results_logged}, "
            f"published {restart.stop_results_published}"
        )

    # --- the end -------------------------------------------------------------------------

    def finish(self) -> dict:
        assert self.sim is not None and self.bridge is not None
        self.sim_call("DELETE", "/_sim/faults")
        self.end_commands_at = self.now()
        log("schedule done: faults cleared, waiting for the last results")
        # Fill in when the bridge came back after each restart.
        deadline = time.monotonic() + self.args.drain
        while time.monotonic() < deadline:
            self.check_bridge_alive()
            if not self.classify()["missing_unexplained"] and not self.waiting_for_results():
                break
            time.sleep(1)
        self.check_bridge_alive()
        rss_end = self.sample_rss("end")
        if rss_end is None:
            self.fail("could not read the bridge's RSS at the end")
        convergence = self.check_convergence()
        stale_tasks = self.retained_non_final_tasks()
        time.sleep(1)
        final_state = self.observer.last_bridge_state()
        if final_state != "online":
            self.fail(f"bridge/state ended '{final_state}', not 'online'")
        counters = self.sim.call("GET", "/_sim/counters")
        # Stop the bridge as a service manager would, and check it stops cleanly.
        self.bridge_expected_down = True
        code = self.bridge.terminate()
        final_stop_results = self.new_stop_failures()
        if code != 0:
            self.fail(f"the bridge exited with code {code} on the final SIGTERM (expected 0)")
        return {"counters": counters, "final_state": final_state, "final_exit": code,
                "convergence": convergence, "stale_tasks": stale_tasks,
                "final_stop_results": final_stop_results}

    def retained_non_final_tasks(self) -> list[str]:
        """Retained `.../task` payloads still `accepted`/`running` at the end, with no
        task running in the simulator for them: what a user would see stuck forever."""
        assert self.broker is not None
        running = self.hung_upids()
        stale = []
        retained = read_retained(self.broker.port, f"{BASE}/{CLUSTER}/+/+/task", 2.0)
        for topic, payload in sorted(retained.items()):
            if not payload:
                continue
            report = json.loads(payload)
            if report.get("state") not in FINAL_STATES and report.get("upid") not in running:
                stale.append(f"{topic} id={report.get('id')} state={report.get('state')}")
        return stale

    def waiting_for_results(self) -> bool:
        """Commands sent in the last seconds may still be running."""
        with self.observer.lock:
            return any(
                c.acked and not c.finals and self.now() - c.sent_at < 20
                for c in self.observer.commands.values()
            )

    def hung_upids(self) -> set[str]:
        assert self.sim is not None
        return {t["upid"] for t in self.sim.call("GET", "/_sim/tasks") if t["running"]}

    def classify(self) -> dict:
        hung = self.hung_upids()
        restarts = [r.killed_at for r in self.broker_restarts] + [
            r.sigterm_at for r in self.bridge_restarts
        ]
        out = {
            "sent": 0, "acked": 0, "not_acked": 0, "with_final": 0, "by_state": {},
            "duplicates": [], "conflicting": [], "replays_after_restart": 0,
            "missing_probe": [], "missing_broker_crash": [], "missing_bridge_restart": [],
            "missing_hung": [], "missing_unexplained": [], "unacked_answered": 0,
            "fault_commands": {}, "probes": 0,
        }
        with self.observer.lock:
            commands = list(self.observer.commands.values())
            for c in commands:
                out["sent"] += 1
                if c.purpose == "no-session probe":
                    out["probes"] += 1
                if not c.acked:
                    out["not_acked"] += 1
                    if c.finals:
                        out["unacked_answered"] += 1
                    continue
                out["acked"] += 1
                if c.finals:
                    out["with_final"] += 1
                    distinct = {payload for _, payload, _ in c.finals}
                    state = json.loads(c.finals[0][1])["state"]
                    out["by_state"][state] = out["by_state"].get(state, 0) + 1
                    if c.purpose != "random":
                        key = f"{c.purpose} -> {state}"
                        out["fault_commands"][key] = out["fault_commands"].get(key, 0) + 1
                    if len(distinct) > 1:
                        out["conflicting"].append(c.id)
                    live = [t for t, _, retain in c.finals if not retain]
                    for earlier, later in zip(live, live[1:]):
                        if any(earlier <= r <= later for r in restarts):
                            out["replays_after_restart"] += 1
                        else:
                            out["duplicates"].append(c.id)
                    continue
                if c.purpose != "random":
                    key = f"{c.purpose} -> (no final)"
                    out["fault_commands"][key] = out["fault_commands"].get(key, 0) + 1
                last = c.states[-1][1] if c.states else None
                bridge_restart = next(
                    (r for r in self.bridge_restarts if 0 <= r.sigterm_at - c.sent_at <= 30), None
                )
                entry = f"{c.id} {c.action} {c.kind}/{c.vmid} sent {c.sent_at:.1f}s last={last}"
                crash = next(
                    (r for r in self.broker_restarts if 0 <= r.killed_at - c.sent_at <= 0.5), None
                )
                if c.purpose == "no-session probe":
                    out["missing_probe"].append(entry)
                elif crash is not None and not c.states:
                    out["missing_broker_crash"].append(entry)
                elif c.upid and c.upid in hung:
                    out["missing_hung"].append(entry)
                elif bridge_restart is not None:
                    out["missing_bridge_restart"].append(entry)
                else:
                    out["missing_unexplained"].append(entry)
        return out

    def check_convergence(self) -> dict:
        """After the faults stop, the retained guest states must match the simulator's
        world: the same guests, each on its node, with its power state."""
        assert self.sim is not None and self.broker is not None
        deadline = time.monotonic() + 30
        mismatches: list[str] = []
        while time.monotonic() < deadline:
            world = {g["vmid"]: g for g in self.sim.call("GET", "/_sim/world")["guests"]}
            published = read_retained(self.broker.port, f"{BASE}/{CLUSTER}/+/+", 2.0)
            states = {}
            for topic, payload in published.items():
                parts = topic.split("/")
                if parts[2] in ("qemu", "lxc") and payload:
                    states[int(parts[3])] = json.loads(payload)
            mismatches = []
            for vmid in sorted(set(world) | set(states)):
                truth, seen = world.get(vmid), states.get(vmid)
                if truth is None or seen is None:
                    mismatches.append(f"{vmid}: sim has {bool(truth)}, MQTT has {bool(seen)}")
                    continue
                if truth["node"] != seen.get("node"):
                    mismatches.append(f"{vmid}: node {seen.get('node')} != sim {truth['node']}")
                if not same_power(truth, seen.get("status")):
                    mismatches.append(f"{vmid}: status {seen.get('status')} != sim {truth['status']}")
            if not mismatches:
                return {"guests": len(world), "mismatches": []}
            time.sleep(2)
        self.fail(f"retained guest states did not converge to the simulator: {mismatches[:5]}")
        return {"guests": len(world), "mismatches": mismatches}

    # --- report --------------------------------------------------------------------------

    def report(self, end: dict) -> dict:
        c = self.classify()
        if c["missing_unexplained"]:
            self.fail(f"{len(c['missing_unexplained'])} acknowledged command(s) got no final result")
        if c["duplicates"]:
            self.fail(f"{len(c['duplicates'])} command(s) got their final result twice without a restart in between")
        if c["conflicting"]:
            self.fail(f"{len(c['conflicting'])} command(s) got two different final results")
        if self.observer.regressions:
            self.fail(f"{len(self.observer.regressions)} non-final state(s) after a final result")
        if self.observer.unknown_ids:
            self.fail(f"{len(self.observer.unknown_ids)} task message(s) with an id we never sent")
        counters = end["counters"]
        polls = counters.get("GET /cluster/resources", 0)
        rss_values = [kb for _, _, kb in self.rss]
        summary = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "seed": self.args.seed,
            "binary": self.args.binary,
            "duration_s": round(self.end_commands_at - self.started_at, 1),
            "proxmox_requests": sum(counters.values()),
            "polls_cluster_resources": polls,
            "counters": counters,
            "commands": {k: v for k, v in c.items() if not isinstance(v, list)},
            "held_back": self.held,
            "missing": {k: c[k] for k in (
                "missing_probe", "missing_broker_crash", "missing_bridge_restart", "missing_hung",
                "missing_unexplained")},
            "duplicates": c["duplicates"],
            "conflicting": c["conflicting"],
            "faults": dict(sorted(self.faults.items())),
            "broker_restarts": [vars(r) for r in self.broker_restarts],
            "bridge_restarts": [vars(r) for r in self.bridge_restarts],
            "rss_kb": [{"t": round(t, 1), "pid": pid, "kb": kb} for t, pid, kb in self.rss],
            "final_bridge_state": end["final_state"],
            "final_exit_code": end["final_exit"],
            "convergence": end["convergence"],
            "stuck_task_topics": end["stale_tasks"],
            "final_stop_results_logged": end["final_stop_results"],
            "task_messages": self.observer.task_messages,
            "cleared_task_topics": self.observer.cleared_task_topics,
            "failures": self.failures,
        }
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        with open(self.workdir / "commands.jsonl", "w") as out:
            with self.observer.lock:
                for command in self.observer.commands.values():
                    out.write(json.dumps(vars(command)) + "\n")

        def mib(kb):
            return f"{kb / 1024:.1f} MiB"

        survived = sum(1 for r in self.broker_restarts if r.bridge_online_at is not None)
        lines = [
            "",
            "===== pve2mqtt soak summary =====",
            f"duration            {(self.end_commands_at - self.started_at) / 60:.1f} min of commands "
            f"and faults (+{self.now() - self.end_commands_at:.0f} s drain and checks), seed {self.args.seed}",
            f"Proxmox requests    {sum(counters.values())} served by the simulator, "
            f"{polls} polls of /cluster/resources",
            f"commands            {c['sent']} published, {c['acked']} acknowledged by the broker, "
            f"{c['not_acked']} not acknowledged (broker down; {c['unacked_answered']} of them answered anyway)",
            f"final results       {c['with_final']} of {c['acked']} acknowledged commands; by state: "
            + ", ".join(f"{k} {v}" for k, v in sorted(c["by_state"].items())),
            f"held back           {self.held} random commands not published while the bridge "
            "reconnected after a restart (it has no session then; see the probes)",
            f"missing             {len(c['missing_unexplained'])} unexplained (FAILURE if > 0)",
            f"  expected, apart:  {len(c['missing_probe'])} of {c['probes']} probes published while the "
            "bridge had no subscription (clean session: nothing delivers them later)",
            f"                    {len(c['missing_broker_crash'])} acknowledged < 0.5 s before the broker "
            "was killed, never seen by the bridge (lost with the broker)",
            f"                    {len(c['missing_bridge_restart'])} in flight at the bridge restart "
            "(the stopping bridge does not publish their end; the new one does not know them)",
            f"                    {len(c['missing_hung'])} on a task the simulator hangs "
            f"(the bridge follows it for {HUNG_TASK_DEADLINE})",
            f"duplicates          {len(c['duplicates'])} (FAILURE if > 0); conflicting finals "
            f"{len(c['conflicting'])}; identical re-deliveries after a restart "
            f"{c['replays_after_restart']} (expected: retained task topics restored on the new broker)",
            "fault commands      " + ", ".join(f"{k}: {v}" for k, v in sorted(c["fault_commands"].items())),
            "faults injected     " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"broker restarts     {len(self.broker_restarts)}, survived {survived} "
            "(bridge back online after each: "
            + ", ".join(
                f"{(r.bridge_online_at - r.up_at):.1f} s" if r.bridge_online_at and r.up_at else "never"
                for r in self.broker_restarts
            ) + ")",
            f"bridge restarts     {len(self.bridge_restarts)} (SIGTERM exit codes "
            + ", ".join(str(r.exit_code) for r in self.bridge_restarts)
            + f"; final SIGTERM exit code {end['final_exit']})",
        ]
        for i, r in enumerate(self.bridge_restarts, 1):
            lines.append(
                f"  restart #{i}: stopping bridge logged {r.stop_results_logged} final result(s) "
                f"'the bridge stopped while the task was running', {r.stop_results_published} "
                f"reached MQTT; {len(r.stuck_after_restart)} guest(s) left with a retained "
                "accepted/running task 8 s after the new bridge was online"
            )
            for entry in r.stuck_after_restart[:10]:
                lines.append(f"    stuck: {entry}")
        lines.append(
            f"  final stop: the bridge logged {end['final_stop_results']} final result(s) for tasks "
            "still running (hung) as it stopped"
        )
        if rss_values:
            lines.append(
                f"bridge RSS          start {mib(rss_values[0])}, peak {mib(max(rss_values))}, "
                f"end {mib(rss_values[-1])}"
            )
            per_pid: dict[int, list[int]] = {}
            for _, pid, kb in self.rss:
                per_pid.setdefault(pid, []).append(kb)
            for pid, values in per_pid.items():
                lines.append(
                    f"  pid {pid:<8}      " + " ".join(f"{v / 1024:.1f}" for v in values) + " MiB"
                )
        lines += [
            f"guest states        {'converged to the simulator' if not end['convergence']['mismatches'] else 'NOT converged'} "
            f"({end['convergence']['guests']} guests)",
            f"stuck task topics   {len(end['stale_tasks'])} retained `.../task` still accepted/running "
            "with no task running in the simulator",
            f"bridge/state        ended '{end['final_state']}'",
            f"result              {'PASS' if not self.failures else 'FAIL'}",
        ]
        for failure in self.failures:
            lines.append(f"  - {failure}")
        for key in ("missing_unexplained", "missing_bridge_restart", "missing_hung",
                    "missing_broker_crash", "missing_probe"):
            for entry in c[key][:10]:
                lines.append(f"  {key}: {entry}")
        for entry in end["stale_tasks"][:10]:
            lines.append(f"  stuck: {entry}")
        for entry in c["duplicates"][:10] + c["conflicting"][:10]:
            lines.append(f"  duplicate: {entry}")
        lines.append(f"details: {self.workdir}/summary.json, commands.jsonl, events.log, bridge.log")
        print("\n".join(lines), flush=True)
        return summary

    def cleanup(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stop()
        if self.publisher is not None:
            self.publisher.close()
        if self.bridge is not None and self.bridge.process is not None:
            stop_process(self.bridge.process)
        if self.broker is not None:
            self.broker.stop()
        if self.sim is not None:
            self.sim.stop()
        self.events_log.close()


def same_power(sim_guest: dict, bridge_status: str | None) -> bool:
    """Does the bridge's status say what the simulator's power state means (SPEC §3)?"""
    sim_status = sim_guest["status"]
    # A hibernated VM is `stopped` with lock `suspended`; the bridge calls it `suspended`.
    if sim_status == "stopped" and sim_guest.get("lock") == "suspended":
        return bridge_status == "suspended"
    if sim_status == bridge_status:
        return True
    # A paused VM's QEMU process runs: /cluster/resources lists it `running`; the bridge
    # shows `paused` (from status/current) only for a while after its own command.
    return sim_status == "paused" and bridge_status in ("running", "paused")


def read_retained(port: int, topic_filter: str, quiet: float) -> dict[str, bytes]:
    """The retained messages on a filter: subscribe and read until `quiet` seconds pass
    without a message (retained copies arrive in a burst right after SUBACK)."""
    messages: dict[str, bytes] = {}
    connection = MqttConnection(port, f"soak-check-{os.getpid()}")
    try:
        connection.subscribe([topic_filter])
        while True:
            try:
                kind, flags, body = connection.read_packet(quiet)
            except TimeoutError:
                return messages
            if kind == 3:
                topic, payload, retain, packet_id = parse_publish(flags, body)
                if packet_id is not None:
                    connection.puback(packet_id)
                if retain:
                    messages[topic] = payload
                elif topic in messages or payload:
                    messages[topic] = payload  # a live update is newer than the copy
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/debug/pve2mqtt")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="2 minutes, broker restarts every 40 s")
    parser.add_argument("--rate", type=float, default=3.0, help="commands per second (mean)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--guests", type=int, default=60)
    parser.add_argument("--broker-every", type=float, default=90.0, help="seconds between broker restarts")
    parser.add_argument("--hangs", type=int, default=None, help="tasks the simulator hangs (default 2, quick 1)")
    parser.add_argument("--drain", type=float, default=45.0, help="max seconds to wait for last results")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--verbose", action="store_true", help="print every event")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 2.0
        args.broker_every = 40.0
    if args.hangs is None:
        args.hangs = 1 if args.quick else 2
    if args.seed is None:
        args.seed = random.randrange(1, 1_000_000)
    if not os.access(args.binary, os.X_OK):
        print(f"no executable at {args.binary}: build it first (scripts/soak.sh does)", file=sys.stderr)
        return 2
    soak = Soak(args)
    log(f"pve2mqtt soak: {args.minutes:g} min, seed {args.seed}, binary {args.binary}")
    try:
        soak.start()
        soak.run()
        end = soak.finish()
        soak.report(end)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        soak.cleanup()
    return 1 if soak.failures else 0


if __name__ == "__main__":
    sys.exit(main())
