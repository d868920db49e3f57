# SPDX-License-Identifier: GPL-2.0-only
"""Asks a Minecraft server for its status with mcstatus and prints one JSON line.

    python mcstatus_probe.py java|bedrock HOST PORT [TIMEOUT_SECONDS]

{"ok": true, "kind": "java", "version": "1.21.4", "protocol": 769, "motd": "...",
 "online": 0, "max": 20, "latency_ms": 1.2}; on failure {"ok": false, "error": "..."}
and exit status 1.
"""

import json
import sys

from mcstatus import BedrockServer, JavaServer


def status(kind: str, host: str, port: int, timeout: float) -> dict:
    if kind == "java":
        r = JavaServer(host, port, timeout=timeout).status(tries=1)
    elif kind == "bedrock":
        r = BedrockServer(host, port, timeout=timeout).status(tries=1)
    else:
        raise ValueError(f"kind must be java or bedrock, not {kind[:64]!r}")
    return {
        "ok": True,
        "kind": kind,
        "version": r.version.name,
        "protocol": r.version.protocol,
        "motd": r.motd.to_plain(),
        "online": r.players.online,
        "max": r.players.max,
        "latency_ms": r.latency,
    }


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: mcstatus_probe.py java|bedrock HOST PORT [TIMEOUT_SECONDS]", file=sys.stderr)
        return 2
    try:
        out = status(argv[0], argv[1], int(argv[2]), float(argv[3]) if len(argv) == 4 else 5.0)
    except Exception as e:  # one line of JSON whatever went wrong
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
