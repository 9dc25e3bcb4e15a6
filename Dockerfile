# relay: one image for every role. The command picks it:
#   relay web         gunicorn serving the webhooks, /metrics, /healthz, /readyz
#   relay worker      the delivery loop (RELAY_WORKER_METRICS_BIND for its /metrics)
#   relay db upgrade  the Alembic migrations, run once per release
#
# Build: docker build -t relay:0.1.0 .

# --- builder: a wheel of relay, installed with its dependencies into /opt/venv ---
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "pip==24.3.1"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay

# Build a wheel, then install it: relay lands in the venv as a regular package,
# and what the build leaves behind (egg-info, build/) stays in this stage.
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir /tmp/wheels/relay-*.whl

# --- runtime: the venv alone on a fresh slim image; no compiler, no pip cache ---
FROM python:3.11-slim

LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Turns a helpdesk tag into a Bugpilot capture and an internal note"

# A fixed numeric uid lets Kubernetes check runAsNonRoot without reading
# /etc/passwd; the metrics directory exists so `docker run` works without a
# mounted volume (Kubernetes mounts an emptyDir over /tmp instead).
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /app \
       --no-create-home --shell /usr/sbin/nologin relay \
    && install -d -o relay -g relay -m 0750 /app \
    && install -d -o relay -g relay -m 0700 /tmp/relay-metrics

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/relay-metrics \
    RELAY_BIND=0.0.0.0:8080

WORKDIR /app
USER 10001:10001
EXPOSE 8080

# slim has no curl; urlopen raises (exit 1) on a refused connection or a non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["relay"]
CMD ["web"]
