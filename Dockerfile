# syntax=docker/dockerfile:1
# Build wheels in one stage, install them in a slim one that runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY inventoryd ./inventoryd
COPY persistence ./persistence
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /home/inventoryd --create-home inventoryd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /home/inventoryd
# In a container the database is a service of its own (DATABASE_URL), and logs are JSON lines.
ENV INVENTORYD_HOST=0.0.0.0 \
    INVENTORYD_PORT=8080 \
    INVENTORYD_LOG_FORMAT=json \
    INVENTORYD_DRAIN_GRACE_S=2 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["inventoryd"]
CMD ["serve"]
