# syntax=docker/dockerfile:1
# Dialog Gateway: one image for the gateway (`serve`, the default command), the reference
# back-ends (`backend chat`, `backend tasks`) and the development certificates (`certs`).
#
#   docker build -t dialog-gateway:local .
#
# gen/ is committed, so the build runs no code generation. The image holds no certificate and
# no secret: .dockerignore keeps certs/ and .env out of the build context.

ARG PYTHON_VERSION=3.11

# --- build: install the package and its dependencies into a virtual environment -------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY gateway ./gateway
COPY adapters ./adapters
RUN /opt/venv/bin/pip install .

# --- runtime: the virtual environment, the configuration files and a non-root user ----------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0
# A fixed numeric id, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 dialog \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin dialog
COPY --from=build /opt/venv /opt/venv
# The gateway reads config/gateway.json and config/routes.json relative to its working
# directory, and the default certificate and data paths (certs/…, data/…) too.
WORKDIR /app
COPY config ./config
# Owned by the runtime user: a named volume mounted here starts with this ownership.
RUN mkdir -p certs data && chown 10001:10001 certs data
USER 10001:10001
# PORT (HTTPS and WebSocket) and GRPC_PORT (gRPC, with grpc.health.v1).
EXPOSE 8080 50051
# Exec form: the gateway is PID 1 and receives SIGTERM itself, then drains within
# DRAIN_TIMEOUT_S. No HEALTHCHECK here, since the same image also runs the back-ends: the
# compose file and the Kubernetes probes check the gateway.
ENTRYPOINT ["dialog-gateway"]
CMD ["serve"]
