#!/usr/bin/env python3
"""Counts the state changes Home Assistant records, per minute, from a running harness.

Every `state_changed` event is one row HA's recorder writes (an unchanged state with
unchanged attributes fires `state_reported` instead, and is not recorded). This script
subscribes to them over HA's websocket for a window and prints the rate, per domain and
for the busiest entities, as JSON.

Usage: scripts/ha-state-changes.py [--harness DIR] [--seconds 120] [--prefix sensor.]
Needs a harness started with start.sh (its state.json holds the URL and token); runs on
the harness's venv python.
"""
import argparse
import asyncio
import collections
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--harness", default=os.environ.get("HA_HARNESS", "../shared/tools/ha-harness"))
parser.add_argument("--seconds", type=float, default=120.0)
parser.add_argument("--top", type=int, default=10)
args = parser.parse_args()

sys.path.insert(0, os.path.abspath(args.harness))
import harness_lib  # noqa: E402

harness_lib.ensure_venv()


async def count(ha: "harness_lib.HA", seconds: float) -> dict:
    import aiohttp

    url = ha.base_url.replace("http", "ws", 1) + "/api/websocket"
    per_entity: collections.Counter = collections.Counter()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.receive_json()
            await ws.send_json({"type": "auth", "access_token": ha.token})
            if (await ws.receive_json()).get("type") != "auth_ok":
                raise SystemExit("websocket auth failed")
            await ws.send_json({"id": 1, "type": "subscribe_events", "event_type": "state_changed"})
            start = time.monotonic()
            while (left := seconds - (time.monotonic() - start)) > 0:
                try:
                    msg = await asyncio.wait_for(ws.receive_json(), timeout=left)
                except asyncio.TimeoutError:
                    break
                if msg.get("type") == "event":
                    per_entity[msg["event"]["data"]["entity_id"]] += 1
    per_domain: collections.Counter = collections.Counter()
    for entity, n in per_entity.items():
        per_domain[entity.split(".", 1)[0]] += n
    minutes = seconds / 60
    total = sum(per_entity.values())
    return {
        "seconds": seconds,
        "state_changes": total,
        "per_minute": round(total / minutes, 1),
        "entities_changed": len(per_entity),
        "per_domain_per_minute": {d: round(n / minutes, 1) for d, n in sorted(per_domain.items())},
        "busiest_per_minute": {e: round(n / minutes, 1) for e, n in per_entity.most_common(args.top)},
    }


print(json.dumps(asyncio.run(count(harness_lib.HA.from_state(), args.seconds)), indent=2))
