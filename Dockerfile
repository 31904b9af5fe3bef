# syntax=docker/dockerfile:1
# Conveyor: one image, two targets.
#   docker build --target controller -t conveyor-controller .
#   docker build --target agent      -t conveyor-agent .
# Both run as the unprivileged user `conveyor` (uid 10001) and carry a HEALTHCHECK.
# See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------- build: a wheel, a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Compilers are not needed: every dependency ships manylinux wheels.
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/conveyor \
 && /opt/conveyor/bin/pip install --no-compile . \
 && /opt/conveyor/bin/python -m compileall -q /opt/conveyor/lib

# ---------------------------------------------------------------- base: what both run on
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_LOG_FORMAT=json
# tini reaps zombies and forwards SIGTERM (graceful shutdown); git and ca-certificates
# are what build steps most often need on an agent (and the controller's git triggers).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /var/lib/conveyor \
      --create-home --shell /usr/sbin/nologin conveyor \
 && mkdir -p /var/lib/conveyor/blobs /var/lib/conveyor/work \
 && chown -R conveyor:conveyor /var/lib/conveyor
COPY --from=build /opt/conveyor /opt/conveyor
COPY deploy/docker/entrypoint.sh /usr/local/bin/conveyor-entrypoint
WORKDIR /var/lib/conveyor
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/conveyor-entrypoint"]

# ---------------------------------------------------------------- controller
FROM base AS controller
# State (admin token file, blob folder unless S3) lives under /var/lib/conveyor:
# mount a volume there, and the same shared volume (NFS) at /var/lib/conveyor/blobs
# on every controller.
VOLUME ["/var/lib/conveyor"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["conveyor", "healthcheck", "--url", "http://127.0.0.1:8080"]
CMD ["server", "--host", "0.0.0.0", "--port", "8080", "--home", "/var/lib/conveyor", \
     "--blob-dir", "/var/lib/conveyor/blobs"]

# ---------------------------------------------------------------- agent
FROM base AS agent
# Workspaces live here: an emptyDir/volume sized for the builds.
VOLUME ["/var/lib/conveyor/work"]
# Healthy while the controller lists this agent as online (its heartbeats arrive).
# CONVEYOR_URL, CONVEYOR_TOKEN (or CONVEYOR_TOKEN_FILE) and CONVEYOR_AGENT_NAME are
# set by the deployment; the name defaults to the container's host name.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["conveyor-entrypoint", "sh", "-c", "exec conveyor healthcheck --agent \"${CONVEYOR_AGENT_NAME:-$(hostname)}\""]
CMD ["sh", "-c", "exec conveyor agent --name \"${CONVEYOR_AGENT_NAME:-$(hostname)}\" --labels \"${CONVEYOR_AGENT_LABELS:-linux,container}\" --executors \"${CONVEYOR_AGENT_EXECUTORS:-2}\" --workdir /var/lib/conveyor/work"]
