# One image for both modes: the control plane (default command) and tenant machines, which the
# control plane creates through the Fly Machines API with `serve --mode tenant --user-id U`.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir uv
COPY pyproject.toml requirements.lock README.md ./
COPY tradeengine ./tradeengine
COPY alembic ./alembic
COPY alembic.ini ./
# Install exactly the locked versions, then the package itself without re-resolving.
RUN uv venv /opt/venv && \
    grep -v -E '^(ta-lib|ruff|mypy|pytest|hypothesis|schemathesis)' requirements.lock > /tmp/runtime.lock && \
    uv pip install --python /opt/venv/bin/python --no-cache -r /tmp/runtime.lock && \
    uv pip install --python /opt/venv/bin/python --no-cache --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tradeengine
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/alembic /app/alembic
COPY --from=build /src/alembic.ini /app/alembic.ini
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRADEENGINE_HOST=0.0.0.0 \
    TRADEENGINE_PORT=8080 \
    TRADEENGINE_LOG_FORMAT=json
USER tradeengine
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["tradeengine"]
CMD ["serve", "--mode", "control"]
