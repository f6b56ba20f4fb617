# gslb: multi-stage build. The first stage compiles the Cython scoring kernel into a wheel;
# the runtime stage has no compiler, runs as a non-root user and reads its config from a
# mounted file.
#
#   docker build -t gslb .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 \
#       -v $PWD/config/example.toml:/etc/gslb/gslb.toml:ro \
#       -e GSLB_ADMIN_TOKEN=change-me gslb
#
# Ports: 8080 public listener, 9901 admin listener (metrics, status page, drains: publish it
# on a private host address only, as above). A container's loopback is private to it, so the
# CMD binds both on all interfaces with --listen/--admin-listen, which win over
# server.listen/server.admin_listen in the mounted config (example.toml keeps admin on
# 127.0.0.1 for runs outside a container) and hold across reloads and worker restarts.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gslb ./gslb
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /wheels \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/gslb-*.whl

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gslb
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels gslb \
    && rm -rf /wheels \
    && python -c "import gslb.core.scoring as s; assert s.BACKEND == 'cython', s.BACKEND"
USER gslb
EXPOSE 8080 9901
VOLUME ["/etc/gslb"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gslb"]
CMD ["serve", "--config", "/etc/gslb/gslb.toml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9901"]
