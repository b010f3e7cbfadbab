"""A stop voter written with nothing but redis-py and msgpack, as docs/protocol.md describes.

Usage: python plain_voter.py REDIS_URL RUN_ID VOTER_NAME [SOURCE]. It registers as a voter,
heartbeats, waits for the run's second validation (EPOCH_COMPLETED of split "val"), votes stop,
and exits. SOURCE (default: VOTER_NAME) is the `source` of its VOTE envelopes.
"""

from __future__ import annotations

import os
import sys
import time

import msgpack
import redis

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits in Crockford base32."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def envelope(run_id: str, source: str, type_: str, data: dict, epoch: int = 0) -> bytes:
    """One envelope of docs/protocol.md section 3, packed as the `env` field's value."""
    env = {
        "v": 1,
        "id": ulid(),
        "run_id": run_id,
        "type": type_,
        "source": source,
        "ts": time.time(),
        "epoch": epoch,
        "iteration": 0,
        "data": data,
    }
    return msgpack.packb(env, use_bin_type=True)


def main(url: str, run_id: str, name: str, source: str | None = None) -> int:
    """Register, wait for the second validation, vote stop."""
    r = redis.Redis.from_url(url)
    control = f"trainer:run:{run_id}:control"
    events = f"trainer:run:{run_id}:events"
    me = {"kind": "plain-voter", "name": name}
    r.xadd(control, {"env": envelope(run_id, name, "WORKER_JOINED", {**me, "votes": True})})
    last, validations, deadline = "0", 0, time.monotonic() + 90
    while time.monotonic() < deadline:
        r.xadd(control, {"env": envelope(run_id, name, "HEARTBEAT", me)})
        for _, entries in r.xread({events: last}, block=500) or []:
            for entry_id, fields in entries:
                last = entry_id
                env = msgpack.unpackb(fields[b"env"], raw=False)
                if env["type"] == "EPOCH_COMPLETED" and env["data"]["split"] == "val":
                    validations += 1
                    vote = {
                        "stop": validations >= 2,
                        "reason": f"plain voter: validation {validations}",
                        "voter": name,
                        "epoch": env["epoch"],
                    }
                    ballot = envelope(run_id, source or name, "VOTE", vote, env["epoch"])
                    r.xadd(control, {"env": ballot})
                    if vote["stop"]:
                        return 0
    print("the run never validated twice", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
