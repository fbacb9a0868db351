"""`crm-sync health`: asks this machine's worker for its health, for a container's HEALTHCHECK.

The probe reads the same configuration as the worker (port and bind address), so an image or a
pod that moves the port does not need a second place to say so.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from processors.config import Config

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def health_url(config: Config, *, live: bool = False) -> str:
    """The worker's own `/health/ready` (or `/health/live`); a wildcard bind is asked on loopback."""
    host = _WILDCARDS.get(config.http_bind, config.http_bind)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.metrics_port}/health/{'live' if live else 'ready'}"


def probe(config: Config, *, live: bool = False, timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, one line saying why): 200 is healthy; 503, a refused or a slow answer is not."""
    url = health_url(config, live=live)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code} {exc.read().decode(errors='replace')}"
    except OSError as exc:
        return False, f"{url}: {exc}"
