# One image for both modes: the control plane (default command) and tenant machines, which the
# control plane creates through the Fly Machines API with `serve --mode tenant --user-id U`.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir uv
COPY pyproject.toml requirements-runtime.lock README.md ./
COPY tradeengine ./tradeengine
# Install exactly the locked runtime versions (no dev tools), then the package itself without
# re-resolving. The migrations ship inside the package (tradeengine/store/alembic), so
# `db upgrade` works in the image.
RUN uv venv /opt/venv && \
    uv pip install --python /opt/venv/bin/python --no-cache -r requirements-runtime.lock && \
    uv pip install --python /opt/venv/bin/python --no-cache --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tradeengine
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    TRADEENGINE_HOST=0.0.0.0 \
    TRADEENGINE_PORT=8080 \
    TRADEENGINE_LOG_FORMAT=json
# Compile the indicator kernels once at build time, so no container pays the JIT on start.
RUN mkdir -p /opt/numba-cache && python -c "import tradeengine.indicators" && chown -R tradeengine /opt/numba-cache
USER tradeengine
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["tradeengine"]
CMD ["serve", "--mode", "control"]
