"""podman for the container tests: found, or a failure under CI=true (a skip elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import ROOT

IMAGES_SH = ROOT / "deploy" / "container" / "images.sh"
CONTAINERS_CONF = ROOT / "deploy" / "container" / "containers.conf"
# A cold build (base root file system, apt, pip) takes about 2 minutes here; a cached one seconds.
BUILD_TIMEOUT_S = 900


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_podman() -> None:
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not found (./dev setup installs Debian's podman and mmdebstrap)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def podman_env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=check)


def build_image(name: str) -> str:
    """`images.sh build NAME` (cached layers make a rebuild fast); returns the image name."""
    require_podman()
    done = subprocess.run(["bash", str(IMAGES_SH), "build", name], env=podman_env(), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"images.sh build {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}", pytrace=False)
    return subprocess.run(["bash", str(IMAGES_SH), "name", name], capture_output=True, text=True, check=True).stdout.strip()


def readable_copy(path: Path) -> None:
    """Bind mounts keep host modes: the image's unprivileged user must be able to read them."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
