"""A proxyless gRPC client in its own process, driven line by line over stdin/stdout.

Usage: ``python tests/proxyless_client.py xds:///NAME`` with the xDS bootstrap in the environment
(``GRPC_XDS_BOOTSTRAP_CONFIG``). Prints ``ready``, then answers each command with one line:

- ``connect``: leave idle (resolve via xDS and connect) without an RPC; prints ``connecting``;
- ``call``: the name of the backend that answered, or ``error CODE details``;
- ``spread N``: N calls, a JSON object counting answers by backend name (errors as ``error:CODE``);
- ``quit``: closes the channel and exits.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import grpc

from pilotfish.testing.grpc_xds import who


def _call(channel: grpc.Channel) -> str:
    try:
        return who(channel, timeout=5.0)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return f"error {code.name if code else 'UNKNOWN'} {details}".replace("\n", " ")


def _ignore(state: grpc.ChannelConnectivity) -> None:
    pass


def main(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        print("ready", flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "connect":
                channel.subscribe(_ignore, try_to_connect=True)
                print("connecting", flush=True)
            elif command == "call":
                print(_call(channel), flush=True)
            elif command == "spread":
                counts: Counter[str] = Counter()
                for _ in range(int(argument)):
                    answer = _call(channel)
                    if answer.startswith("error "):
                        answer = ":".join(answer.split(" ")[:2])
                    counts[answer] += 1
                print(json.dumps(dict(counts), sort_keys=True), flush=True)
            elif command == "quit":
                break
            else:
                print(f"error UNKNOWN_COMMAND {command!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
