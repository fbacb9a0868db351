# The worker image: `crm-sync worker` with the pinned dependencies of constraints.txt, on Debian
# bookworm's Python 3.11.
#
#   docker build -t crm-sync .                         base: debian:bookworm-slim from a registry
#   deploy/container/images.sh build worker            podman, base made locally (nothing pulled)
#
# Runs as the unprivileged user crm-sync (uid 10001); its state directory /var/lib/crm-sync
# (CRM_SYNC_STATE_DIR) is a volume. Give the container a stop timeout above the worker's 30 s drain
# (docker run --stop-timeout 40, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS python
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/crm-sync
# Dependencies first (their own layer, rebuilt only when the pins change), then the project.
# A machine behind a TLS-inspecting proxy passes its CA bundle as the build secret `ca_bundle`
# (images.sh does); without it pip trusts its own CAs.
COPY pyproject.toml constraints.txt /src/
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' >/src/requirements.txt \
 && /opt/crm-sync/bin/pip install --no-cache-dir --disable-pip-version-check -q -c /src/constraints.txt -r /src/requirements.txt
COPY processors /src/processors
COPY connectors /src/connectors
COPY schemas /src/schemas
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && /opt/crm-sync/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps /src

FROM python
# tini is PID 1: it forwards SIGTERM to the worker and reaps; a PID 1 without a handler (the
# worker before its event loop runs, e.g. while the broker is unreachable) would ignore SIGTERM.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 crm-sync \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/crm-sync --no-create-home --shell /usr/sbin/nologin crm-sync \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/crm-sync
COPY --from=build /opt/crm-sync /opt/crm-sync
ENV PATH=/opt/crm-sync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CRM_SYNC_STATE_DIR=/var/lib/crm-sync \
    CRM_SYNC_SECRETS_DIR=/etc/crm-sync/secrets
WORKDIR /var/lib/crm-sync
USER 10001:10001
VOLUME ["/var/lib/crm-sync"]
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["crm-sync", "health"]
ENTRYPOINT ["tini", "--", "crm-sync"]
CMD ["worker"]
