"""``python -m connectors.sandbox``: run the sandbox until SIGINT/SIGTERM.

Prints one JSON line (``salesforce_url``, ``salesforce_instance``, ``hubspot_url``, ``ca_file``,
``session_id``, ``hubspot_token``) once both servers accept connections. ``--seed`` is applied
only when the state was not loaded from an existing ``--state-file``, so restarts never duplicate
seeded records.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from connectors.sandbox.server import CrmSandbox


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the sandbox, block until a termination signal."""
    parser = argparse.ArgumentParser(prog="python -m connectors.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sf-port", type=int, default=0, help="Salesforce HTTPS port (0 = free port)")
    parser.add_argument("--hs-port", type=int, default=0, help="HubSpot + control HTTP port (0 = free port)")
    parser.add_argument("--state-file", type=Path, help="JSON file the state is loaded from and saved to")
    parser.add_argument("--seed", type=Path, help="seed document (JSON) for a fresh state")
    parser.add_argument("--ca-file", type=Path, help="where to write the CA certificate (PEM)")
    parser.add_argument("--cert-name", action="append", default=[], metavar="NAME",
                        help="another host name the Salesforce certificate names (repeatable), e.g. a compose service name")
    args = parser.parse_args(argv)

    sandbox = CrmSandbox(host=args.host, sf_port=args.sf_port, hs_port=args.hs_port,
                         state_file=args.state_file, ca_file=args.ca_file,
                         cert_names=tuple(args.cert_name))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sandbox.start()
    try:
        if args.seed is not None and not sandbox.loaded_from_file:
            sandbox.seed(json.loads(args.seed.read_text(encoding="utf-8")))
            sandbox.save()
        print(json.dumps(sandbox.info()), flush=True)
        stop.wait()
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
