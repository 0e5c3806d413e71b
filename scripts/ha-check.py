#!/usr/bin/env python3
"""The Home Assistant side of scripts/ha-check.sh: with the demo world running against the
harness, reads what HA made of the bridge's discovery and checks the issue 10 entities
on HA itself (entity by entity, as HA parsed and evaluated them), then drives the
simulator and the Refresh button and checks what HA shows.

Usage (from ha-check.sh): scripts/ha-check.py ENTITIES_JSON SIM_URL [--harness DIR]
Prints one line per check and exits 1 when any failed.
"""
import argparse
import json
import os
import ssl
import sys
import time
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("entities")
parser.add_argument("sim_url")
parser.add_argument("--harness", default=os.environ.get("HA_HARNESS", "../shared/tools/ha-harness"))
args = parser.parse_args()
sys.path.insert(0, os.path.abspath(args.harness))
import harness_lib  # noqa: E402

harness_lib.ensure_venv()
ha = harness_lib.HA.from_state()
data = json.load(open(args.entities))
by_id = {e["entity_id"]: e for e in data["entities"]}
failed = []


def check(what, ok, detail=""):
    print(("ok      " if ok else "FAILED  ") + what + (f"  ({detail})" if detail and not ok else ""))
    if not ok:
        failed.append(what)


def entity(eid):
    e = by_id.get(eid)
    if e is None:
        check(f"{eid} exists", False, "not in HA")
        return {"attributes": {}, "discovery_payload": {}}
    return e


def state(eid):
    return ha.rest_ok("GET", f"/api/states/{eid}")


def wait_state(eid, pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        s = state(eid)
        if pred(s["state"]) or time.monotonic() > deadline:
            return s["state"]
        time.sleep(0.25)


_ctx = ssl.create_default_context()
_ctx.check_hostname = False
_ctx.verify_mode = ssl.CERT_NONE  # the simulator's own self-signed certificate, on loopback


def sim(method, path, body=None):
    req = urllib.request.Request(
        args.sim_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(req, context=_ctx, timeout=10) as r:
        return json.loads(r.read() or b"null")


# --- enum sensors -------------------------------------------------------------------
for eid, options in [
    ("sensor.home_assistant_status", ["running", "stopped", "paused", "suspended", "unknown"]),
    ("sensor.pve_status", ["online", "offline", "unknown"]),
    ("sensor.home_assistant_last_command", ["accepted", "running", "ok", "failed", "rejected"]),
    ("sensor.home_assistant_last_task", ["running", "ok", "failed"]),
]:
    e = entity(eid)
    check(f"{eid} is an enum with its options",
          e.get("device_class") == "enum" and e["attributes"].get("options") == options,
          f"{e.get('device_class')} {e['attributes'].get('options')}")
check("guest status reads running", entity("sensor.home_assistant_status").get("state") == "running")

# --- tasks of any origin (issue 12) ----------------------------------------------------
failed_tasks = [x for x in by_id if x.startswith("sensor.pve_failed_tasks")]
# The first task list read may come a poll after the entities were listed: wait for it.
failed_state = (wait_state(failed_tasks[0], lambda st: st.isdigit())
                if len(failed_tasks) == 1 else "")
check("node: a 'Failed tasks (24 h)' sensor with a count",
      failed_state.isdigit(), f"{failed_tasks} {failed_state}")

# --- backup health (issue 12) -----------------------------------------------------------
e = entity("sensor.home_assistant_last_backup_status")
check("guest: 'Last backup status' is an enum ok/warnings/failed",
      e.get("device_class") == "enum" and e["attributes"].get("options") == ["ok", "warnings", "failed"],
      str(e["attributes"].get("options")))
for eid in ["binary_sensor.home_assistant_backup_stale", "binary_sensor.mqtt_in_no_backup_job"]:
    e = entity(eid)
    check(f"{eid} is a problem sensor", e.get("device_class") == "problem", str(e.get("device_class")))
check("demo: CT 101 is in no backup job (problem on)",
      entity("binary_sensor.mqtt_in_no_backup_job").get("state") == "on")
# --- guest agent (issue 12) -----------------------------------------------------------
e = entity("binary_sensor.home_assistant_agent_responding")
check("VM agent: a connectivity binary sensor reading on",
      e.get("device_class") == "connectivity" and e.get("entity_category") == "diagnostic"
      and wait_state("binary_sensor.home_assistant_agent_responding", lambda s: s == "on") == "on",
      f"{e.get('device_class')} {e.get('entity_category')} {e.get('state')}")
st = wait_state("sensor.home_assistant_ip_address", lambda s: s == "192.168.1.50")
check("VM agent: IP address is the first address, loopback and link-local dropped",
      st == "192.168.1.50", st)
attrs = state("sensor.home_assistant_ip_address").get("attributes", {})
check("VM agent: the address list is an attribute",
      attrs.get("ip_addresses") == ["192.168.1.50", "fd00:20::64"], str(attrs.get("ip_addresses")))
st = wait_state("sensor.home_assistant_os", lambda s: s.startswith("Home Assistant OS"))
check("VM agent: OS", st == "Home Assistant OS 14.2", st)
st = wait_state("sensor.home_assistant_disk_used", lambda s: s not in ("unknown", "unavailable"))
check("VM agent: Disk used is shown", st not in ("unknown", "unavailable"), st)
st = wait_state("sensor.mqtt_ip_address", lambda s: s == "192.168.1.51")
check("container: IP address from its interfaces", st == "192.168.1.51", st)

# --- Started instead of uptime --------------------------------------------------------
for eid in ["sensor.home_assistant_started", "sensor.mqtt_started", "sensor.pve_started"]:
    e = entity(eid)
    check(f"{eid} is a timestamp without state_class",
          e.get("device_class") == "timestamp" and e.get("state_class") is None, str(e.get("device_class")))
    st = e.get("state")
    check(f"{eid} is a datetime or unknown (no template error)",
          st in ("unknown",) or (isinstance(st, str) and st[:2] == "20" and "+00:00" in st), repr(st))
uptimes = [x for x in by_id if x.endswith("_uptime")]
check("no uptime entity is left", not uptimes, str(uptimes))
check("no total_increasing anywhere",
      not [x for x, e in by_id.items() if e.get("state_class") == "total_increasing"])

# --- snapshots (issue 12) -------------------------------------------------------------
for eid, count in [("sensor.home_assistant_snapshots", "2"), ("sensor.mqtt_snapshots", "1")]:
    e = entity(eid)
    check(f"{eid} counts the demo snapshots as a measurement",
          e.get("state_class") == "measurement" and e.get("state") == count, f"{e.get('state_class')} {e.get('state')}")
for eid in ["sensor.home_assistant_newest_snapshot", "sensor.mqtt_newest_snapshot"]:
    e = entity(eid)
    st = e.get("state")
    check(f"{eid} is a timestamp with a date",
          e.get("device_class") == "timestamp" and isinstance(st, str) and st[:2] == "20", f"{e.get('device_class')} {st!r}")
snapshot_buttons = [x for x in by_id if x.startswith("button.") and ("snapshot" in x or "rollback" in x)]
check("no button for snapshot, rollback or delete_snapshot", not snapshot_buttons, str(snapshot_buttons))

# --- node connectivity ----------------------------------------------------------------
e = entity("binary_sensor.pve_connectivity")
check("node connectivity: device_class connectivity, on",
      e.get("device_class") == "connectivity" and e.get("state") == "on", f"{e.get('device_class')} {e.get('state')}")
avty = [a["topic"] for a in e["discovery_payload"].get("availability", [])]
check("node connectivity: availability is the bridge and the Proxmox API only",
      avty == ["pve2mqtt/bridge/state", "pve2mqtt/bridge/proxmox/pve"], str(avty))

# --- bridge device --------------------------------------------------------------------
e = entity("binary_sensor.pve2mqtt_bridge_proxmox_api")
check("bridge: Proxmox API connectivity is on",
      e.get("device_class") == "connectivity" and e.get("state") == "on", f"{e.get('device_class')} {e.get('state')}")
dev = e.get("device") or {}
check("bridge: device 'pve2mqtt bridge' with sw_version",
      dev.get("name") == "pve2mqtt bridge" and bool(dev.get("sw_version")), str(dev.get("sw_version")))
e = entity("button.pve2mqtt_bridge_refresh")
check("bridge: Refresh button presses {} on bridge/request/refresh",
      e["discovery_payload"].get("command_topic") == "pve2mqtt/bridge/request/refresh"
      and e["discovery_payload"].get("payload_press") == "{}")

# --- node power buttons (issue 11; the demo turns [commands] node_power on) ----------
for eid, action in [("button.pve_reboot_node", "reboot"), ("button.pve_shut_down_node", "shutdown"),
                    ("button.pve_start_all_guests", "startall"), ("button.pve_stop_all_guests", "stopall"),
                    ("button.pve_suspend_all_guests", "suspendall"), ("button.pve_wake_on_lan", "wakeonlan")]:
    e = entity(eid)
    # HA does not load a disabled entity, so it holds no parsed payload: its registry entry
    # (unique id, disabled by the integration) is what there is to check.
    check(f"{eid}: the node's {action} button, disabled by default",
          e.get("unique_id") == f"pve2mqtt_pve_node_pve_power_{action}"
          and e.get("disabled_by") == "integration", f"{e.get('unique_id')} {e.get('disabled_by')}")
e = entity("sensor.pve_last_command")
check("node: Last command is an enum on node/pve/task",
      e.get("device_class") == "enum" and e["discovery_payload"].get("state_topic") == "pve2mqtt/pve/node/pve/task",
      str(e.get("device_class")))
def wait_entity(eid, pred=lambda s: True, timeout=90.0):
    """The entity's state once it exists in HA and `pred` holds (the slow lane's first
    rounds bring disks, pools and updates some seconds after the guests)."""
    deadline = time.monotonic() + timeout
    while True:
        status, payload = ha.rest("GET", f"/api/states/{eid}")
        if status < 400 and pred(payload["state"]):
            return payload
        if time.monotonic() > deadline:
            return payload if status < 400 else {"state": f"missing (HTTP {status})", "attributes": {}}
        time.sleep(0.5)


# --- cluster health (issue 11) ---------------------------------------------------------
e = entity("sensor.proxmox_pve_ceph_health")
check("Ceph health: enum with its options, reads HEALTH_WARN (the demo's single-node Ceph)",
      e.get("device_class") == "enum"
      and e["attributes"].get("options") == ["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"]
      and e.get("state") == "HEALTH_WARN", f"{e.get('device_class')} {e.get('state')}")
e = entity("binary_sensor.proxmox_pve_ceph")
check("Ceph: a problem sensor, on, with the check as attribute",
      e.get("device_class") == "problem" and e.get("state") == "on"
      and "POOL_NO_REDUNDANCY" in e["attributes"], f"{e.get('state')} {list(e['attributes'])}")
e = entity("sensor.proxmox_pve_ceph_usage")
check("Ceph usage: a percentage", e["attributes"].get("unit_of_measurement") == "%", str(e.get("state")))
e = entity("sensor.home_assistant_lock")
check("guest lock: enum, reads none", e.get("device_class") == "enum" and e.get("state") == "none",
      f"{e.get('device_class')} {e.get('state')}")
e = entity("binary_sensor.home_assistant_ha_managed")
check("guest HA managed: off for VM 100 (not an HA resource)", e.get("state") == "off", str(e.get("state")))
# The demo's VM 102 `windows` is an HA resource, replicated to node pve2 (cluster of two).
e = entity("binary_sensor.windows_ha_managed")
check("guest HA managed: on for VM 102", e.get("state") == "on", str(e.get("state")))
e = wait_entity("sensor.windows_ha_state", lambda s: s == "started")
check("guest HA state: enum reading started",
      e["state"] == "started" and e["attributes"].get("device_class") == "enum", e["state"])
e = wait_entity("binary_sensor.proxmox_pve_ha_manager", lambda s: s == "off")
check("HA manager: a problem sensor, off (quorate, no service in error)",
      e["state"] == "off" and e["attributes"].get("device_class") == "problem", e["state"])
e = wait_entity("sensor.proxmox_pve_ha_master", lambda s: s == "pve")
check("HA master: pve", e["state"] == "pve", e["state"])
e = wait_entity("binary_sensor.windows_replication", lambda s: s == "off")
check("replication of VM 102: a problem sensor, off",
      e["state"] == "off" and e["attributes"].get("device_class") == "problem", e["state"])
e = wait_entity("sensor.windows_last_replication", lambda s: s[:2] == "20")
check("replication of VM 102: last sync is a timestamp",
      e["state"][:2] == "20" and e["attributes"].get("device_class") == "timestamp", e["state"])
check("no replication entity on a guest without a job",
      not [x for x in by_id if x.startswith(("binary_sensor.home_assistant_replication", "binary_sensor.mqtt_replication"))])
e = wait_entity("binary_sensor.pve2_connectivity", lambda s: s == "on")
check("node pve2 of the demo cluster: connectivity on", e["state"] == "on", e["state"])

# --- sizes ----------------------------------------------------------------------------
for eid in ["sensor.home_assistant_disk_size", "sensor.local_on_pve_total"]:
    e = entity(eid)
    check(f"{eid}: no state_class (never changes)", e.get("state_class") is None, str(e.get("state_class")))
for eid in ["sensor.home_assistant_memory_used", "sensor.local_on_pve_used", "sensor.local_on_pve_free"]:
    e = entity(eid)
    check(f"{eid}: in GiB, a number", e.get("unit_of_measurement") == "GiB"
          and e.get("state", "x").replace(".", "", 1).isdigit(), f"{e.get('unit_of_measurement')} {e.get('state')}")
e = entity("sensor.home_assistant_network_in")
check("network rates in KiB/s", e.get("unit_of_measurement") == "KiB/s", str(e.get("unit_of_measurement")))

# --- storage problem ------------------------------------------------------------------
e = entity("binary_sensor.local_on_pve_problem")
check("storage: Problem is a primary problem sensor, off",
      e.get("device_class") == "problem" and e.get("entity_category") is None and e.get("state") == "off",
      f"{e.get('device_class')} {e.get('entity_category')} {e.get('state')}")
check("storage: the old Active entity is removed", "binary_sensor.local_on_pve_active" not in by_id)

# --- names and origin -----------------------------------------------------------------
names = {x: e.get("friendly_name") or "" for x, e in by_id.items()}
check("no 'Proxmox VE version' in any name", not [n for n in names.values() if "Proxmox VE version" in n])
check("storage reads 'Free'", names.get("sensor.local_on_pve_free") == "local on pve Free", str(names.get("sensor.local_on_pve_free")))
origins = {json.dumps(e["discovery_payload"].get("origin"), sort_keys=True) for e in by_id.values() if e.get("discovery_payload")}
check("origin has a support_url everywhere",
      all(json.loads(o or "{}").get("support_url", "").startswith("https://") for o in origins), str(origins))

# --- templates on values the demo does not have (yet) --------------------------------
# A guest state with a boot time, and one with a status outside the enum's list,
# published as the bridge would (then the bridge's own state is put back).
import subprocess  # noqa: E402

port = str(harness_lib.load_state().get("mqtt_port") or os.environ.get("HA_CHECK_PORT", "18830"))
topic = "pve2mqtt/pve/qemu/100"
current = subprocess.run(["mosquitto_sub", "-p", port, "-t", topic, "-C", "1", "-W", "5"],
                         capture_output=True, text=True).stdout.strip()


def publish_state(**fields):
    payload = json.dumps({**json.loads(current), **fields})
    subprocess.run(["mosquitto_pub", "-p", port, "-t", topic, "-m", payload], check=True)


if current:
    publish_state(started=1764679463)
    st = wait_state("sensor.home_assistant_started", lambda s: s.startswith("2025-12-02"))
    check("Started reads value_json.started as a datetime", st == "2025-12-02T12:44:23+00:00", st)
    publish_state(status="prelaunch", started=None)
    st = wait_state("sensor.home_assistant_status", lambda s: s == "unknown")
    check("a status outside the enum's options reads unknown", st == "unknown", st)
    st = state("sensor.home_assistant_started")["state"]
    check("Started reads unknown when started is null", st == "unknown", st)
    subprocess.run(["mosquitto_pub", "-p", port, "-t", topic, "-m", current], check=True)
    wait_state("sensor.home_assistant_status", lambda s: s == "running")
else:
    check("read the guest's state from the broker", False, "nothing on " + topic)

# --- live: Refresh, Proxmox API, node offline ----------------------------------------
def polls():
    return sim("GET", "/_sim/counters").get("GET /cluster/resources", 0)

# Right after a timer poll (the demo polls every 5 s), a press must poll within ~1 s
# (the refresh spacing), well before the timer's next one.
start = polls()
while polls() == start:
    time.sleep(0.05)
before = polls()
ha.rest_ok("POST", "/api/services/button/press", {"entity_id": "button.pve2mqtt_bridge_refresh"})
deadline = time.monotonic() + 2.5
while polls() == before and time.monotonic() < deadline:
    time.sleep(0.05)
check("Refresh pressed in HA polls Proxmox at once", polls() > before, f"{before} -> {polls()}")

sim("POST", "/_sim/faults", {"path_prefix": "/cluster/resources", "kind": "status", "status": 500,
                              "message": "cluster not ready - no quorum?", "count": 2})
st = wait_state("binary_sensor.pve2mqtt_bridge_proxmox_api", lambda s: s == "off")
check("Proxmox API goes off (a state, not unavailable) while polls fail", st == "off", st)
st = wait_state("binary_sensor.pve2mqtt_bridge_proxmox_api", lambda s: s == "on", 60)
check("Proxmox API comes back on", st == "on", st)

sim("POST", "/_sim/nodes/pve", {"online": False})
st = wait_state("binary_sensor.pve_connectivity", lambda s: s == "off")
check("node offline: connectivity is off, not unavailable", st == "off", st)
st = wait_state("sensor.pve_status", lambda s: s == "offline")
check("node offline: status reads offline", st == "offline", st)
st = state("sensor.pve_cpu")["state"]
check("node offline: its other entities are unavailable", st == "unavailable", st)
sim("POST", "/_sim/nodes/pve", {"online": True})
st = wait_state("binary_sensor.pve_connectivity", lambda s: s == "on")
check("node back: connectivity on", st == "on", st)
wait_state("sensor.home_assistant_status", lambda s: s == "running", 60)

# --- node health (issue 11): disks, ZFS pools, updates, reboot, certificate ----------
e = wait_entity("binary_sensor.sdb_on_pve_smart", lambda s: s == "on")
check("failing disk sdb: SMART problem sensor is on",
      e["state"] == "on" and e["attributes"].get("device_class") == "problem", e["state"])
e = wait_entity("binary_sensor.sda_on_pve_smart", lambda s: s == "off")
check("healthy SSD sda: SMART problem sensor is off", e["state"] == "off", e["state"])
e = wait_entity("sensor.sda_on_pve_life_left", lambda s: s not in ("unknown", "unavailable"))
check("SSD sda: life left 88 %", e["state"] in ("88", "88.0") and e["attributes"].get("unit_of_measurement") == "%",
      f"{e['state']} {e['attributes'].get('unit_of_measurement')}")
e = wait_entity("sensor.sdb_on_pve_life_left")
check("HDD sdb: life left unknown (N/A)", e["state"] == "unknown", e["state"])
e = wait_entity("binary_sensor.zfs_tank_on_pve_problem", lambda s: s == "on")
check("degraded pool tank: problem sensor is on", e["state"] == "on", e["state"])
e = wait_entity("sensor.zfs_tank_on_pve_health", lambda s: s == "DEGRADED")
check("degraded pool tank: health enum reads DEGRADED",
      e["state"] == "DEGRADED" and "SUSPENDED" in (e["attributes"].get("options") or []), e["state"])
e = wait_entity("binary_sensor.zfs_rpool_on_pve_problem", lambda s: s == "off")
check("pool rpool: no problem", e["state"] == "off", e["state"])
e = wait_entity("update.pve_proxmox_ve", lambda s: s == "on")
check("node update entity: on, 9.1.5 -> 9.1.6",
      e["state"] == "on" and e["attributes"].get("installed_version") == "9.1.5"
      and e["attributes"].get("latest_version") == "9.1.6",
      f"{e['state']} {e['attributes'].get('installed_version')} {e['attributes'].get('latest_version')}")
e = wait_entity("sensor.pve_pending_updates", lambda s: s == "3")
check("node pending updates: 3", e["state"] == "3", e["state"])
e = wait_entity("binary_sensor.pve_reboot_required", lambda s: s == "on")
check("node reboot required: on (a newer kernel is installed)", e["state"] == "on", e["state"])
e = wait_entity("sensor.pve_certificate_expires", lambda s: s[:2] == "20")
check("node certificate expiry: a timestamp", e["state"][:2] == "20" and e["attributes"].get("device_class") == "timestamp",
      e["state"])
e = wait_entity("sensor.pve_io_delay", lambda s: s not in ("unknown", "unavailable"))
check("node IO delay: a percentage", e["attributes"].get("unit_of_measurement") == "%", e["state"])
e = wait_entity("sensor.pve_subscription", lambda s: s == "none")
check("node subscription: none", e["state"] == "none", e["state"])
sim("POST", "/_sim/nodes/pve/disks/sda", {"health": "FAILED!"})
st = wait_state("binary_sensor.sda_on_pve_smart", lambda s: s == "on", 75)
check("a disk failing in the simulator turns its SMART sensor on", st == "on", st)

print(f"{len(failed)} failed")
sys.exit(1 if failed else 0)
