"""Istio's bookinfo driven from Python: apply routing files, see which reviews version answers.

    .venv/bin/python -m examples.bookinfo.mesh [--requests 20] [ROUTING.yaml ...]

The machinery is in the package, because `pilotfish demo` (the guided tour through Istio's
traffic-management tasks, with expected splits and PASS/FAIL) uses it too:

- `pilotfish.demo.bookinfo.Bookinfo` starts a pilotfish xDS server, the bookinfo services (local
  Python apps from `pilotfish.demo.apps`), a real Envoy sidecar in front of each and an Envoy
  ingress gateway, all on 127.0.0.1; `apply(objects)` serves Istio config objects and waits until
  every Envoy has ACKed them; `page(user)` GETs the product page through the gateway.
- `config_objects(...)` loads the manifests shipped with it (`pilotfish/demo/config/`): the
  Kubernetes Services, the gateway, the DestinationRules and the demo's routing steps.

This script serves the gateway and DestinationRules plus one routing file at a time (default: the
demo's own, `pilotfish/demo/config/routes/*.yaml`) and prints, per user, what the product page
showed. Copy one of those files, change a weight or a match, and pass it here.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pilotfish.demo.bookinfo import CONFIG, Bookinfo, config_objects
from pilotfish.sources import load_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20, help="requests per user and file")
    parser.add_argument("paths", nargs="*", type=Path, help="routing config files or directories")
    args = parser.parse_args(argv)
    base = config_objects("gateway.yaml", "destination-rules.yaml")
    routing = args.paths or sorted((CONFIG / "routes").glob("*.yaml"))
    try:
        with Bookinfo() as bookinfo:
            print(
                f"bookinfo up: 6 sidecars and a gateway on 127.0.0.1:{bookinfo.gateway_address[1]}",
                flush=True,
            )
            for path in routing:
                loaded = load_path(path)
                for error in loaded.errors:
                    print(f"  rejected: {error}", file=sys.stderr)
                bookinfo.apply([*base, *loaded.objects])
                print(f"{path.name}:")
                for user in (None, "jason"):
                    seen: Counter[str] = Counter()
                    for _ in range(args.requests):
                        page = bookinfo.page(user)
                        seen[f"{page.status} reviews-{page.reviews_version} ({page.stars})"] += 1
                    answers = ", ".join(f"{n}x {what}" for what, n in sorted(seen.items()))
                    print(f"  {user or 'anonymous':>9}: {answers}", flush=True)
    except KeyboardInterrupt:  # `with` has stopped every Envoy and app by now
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
