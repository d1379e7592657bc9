# The gateway, one process per container.  Several replicas need the same
# WEBUI_SECRET_KEY (tokens signed by one are checked by the others), a shared
# DATABASE_URL (PostgreSQL) and WEBSOCKET_MANAGER=redis; see docker-compose.yml.
FROM python:3.11-slim

# The runtime dependencies exactly as uv.lock says (--locked: a lock that no
# longer matches pyproject.toml stops the build), installed by the uv that made
# the lock (scripts/lib.sh's UV_VERSION; tests/test_image.py keeps the two
# equal and runs this install on loopback). No extras: nothing of the tests'.
# uv uses the image's Python and never downloads one.
ARG UV_VERSION=0.13.9
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN pip install --no-cache-dir --only-binary=:all: "uv==${UV_VERSION}"

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY gateway ./gateway
RUN uv sync --locked --no-dev --no-editable --no-cache --python /usr/local/bin/python3
ENV PATH="/app/.venv/bin:${PATH}"

ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    DATA_DIR=/data
EXPOSE 8080

# /ready?upstreams=0, not /health: a replica that cannot reach Redis or its
# database takes no traffic; a model server that is down is down for every
# replica, and marking them all unhealthy would not bring it back.
# The port and base path are the container's environment (GATEWAY_PORT or
# PORT, GATEWAY_BASE_PATH); set there, not only in a config file, for the check
# to follow them.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request as u; e = os.environ.get; b = '/'.join(filter(None, (e('GATEWAY_BASE_PATH') or '').strip().split('/'))); u.urlopen('http://127.0.0.1:%s%s/ready?upstreams=0' % (e('GATEWAY_PORT') or e('PORT') or '8080', '/' + b if b else ''), timeout=4)"

CMD ["gateway", "serve"]
