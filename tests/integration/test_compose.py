"""docker-compose.yml under podman-compose, end to end (bench/compose_smoke.py): the stack comes up
from locally built images, a booking published with the publisher SDK reaches both CRMs of the
compose sandbox (over https://sandbox:8443, so its certificate names `sandbox`), and Prometheus
scrapes the worker with every alert rule loaded. About a minute once the images are cached."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.integration.containers import require_podman
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration


def load_smoke():
    spec = importlib.util.spec_from_file_location("compose_smoke", ROOT / "bench" / "compose_smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_compose_stack_delivers_a_booking_and_prometheus_scrapes_it_with_the_rules() -> None:
    require_podman()
    if shutil.which("podman-compose") is None and not (ROOT / ".venv" / "bin" / "podman-compose").exists():
        pytest.fail("podman-compose not installed (it is a pinned test dependency: ./dev setup)", pytrace=False)
    smoke = load_smoke()
    report = smoke.run()
    assert report["ok"] is True
    assert report["booking"]["salesforce_tasks"] == 1 and report["booking"]["hubspot_meetings"] == 1
    assert report["prometheus_target"]["health"] == "up"
    assert report["prometheus_rules"]["missing"] == [] and report["prometheus_rules"]["loaded"] == len(smoke.alert_names())
    assert report["down_exit"] == 0
