# syntax=docker/dockerfile:1
#
# sandboxq worker image.
#
#   docker build -t sandboxq .
#   docker run --rm --stop-timeout 60 -e SANDBOXQ_REDIS_URL=redis://redis:6379/0 \
#       my-app-image myapp.jobs --procs auto --shutdown-timeout 30
#
# The image holds sandboxq and its dependencies, not your handlers: build your
# own image FROM this one and COPY your package into /app (the working
# directory, which the worker puts on sys.path), then pass the handler module
# as the command (or set SANDBOXQ_APP). See docs/deploy.md.
#
# Both stages use the same base tag, so the wheels built in the first one
# match the Python and glibc of the second.

# ---------------------------------------------------------------- build stage
FROM python:3.11-slim-bookworm AS build

# A C compiler for the Cython extension (sandboxq/_fast.pyx), and for any
# dependency that has no binary wheel for this platform. Build stage only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The sandboxq wheel, with the native extension compiled in (a failed compile
# fails the build rather than falling back to the pure-Python twin, and the
# runtime stage checks that it loads); then the wheels of its dependencies,
# resolved from that wheel's metadata.
RUN SANDBOXQ_REQUIRE_EXTENSIONS=1 pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/sandboxq-*.whl

# -------------------------------------------------------------- runtime stage
FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini: a proper PID 1 (forwards signals to the worker, reaps zombies).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-* \
    && rm -rf /var/lib/apt/lists/*

# Only the wheels, bind-mounted from the build stage so they leave no layer
# behind; --no-index: nothing is fetched or compiled here (there is no
# compiler). Then check the install: the whole worker imports, and the
# native hot path is the one that loads.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sandboxq-*.whl \
    && python -c 'import sys, sandboxq, sandboxq.worker.parent; sys.exit(sandboxq.IMPLEMENTATION != "native" and "sandboxq: the Cython extension is missing")'

# A fixed, numeric non-root user, so Kubernetes' runAsNonRoot can verify it
# and volume permissions can be planned (UID/GID 10001).
RUN groupadd --system --gid 10001 sandboxq \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin sandboxq

WORKDIR /app
USER 10001:10001

# Only served when the worker runs with --metrics-port 9100: Prometheus
# metrics on /metrics, health on /healthz and /readyz.
EXPOSE 9100

# SIGTERM drains: no new jobs, jobs in flight get --shutdown-timeout to finish
# (default 30 s), the rest go back to the queue. Give the container runtime a
# longer grace period than that (docker run/stop --stop-timeout 60,
# Kubernetes terminationGracePeriodSeconds: 60), or it SIGKILLs mid-drain.
STOPSIGNAL SIGTERM

# The entrypoint is `sandboxq worker`, with tini in front as PID 1. The worker already reaps unknown children, but tini
# also gives it the signal handling of an ordinary process. No `-g`: tini must
# signal only the worker parent; the parent decides what its children get
# (a group-wide SIGTERM would kill every job in flight instead of draining).
# Exit codes pass through: 0 drained, 1 stopped with jobs handed back,
# 3 boot error.
ENTRYPOINT ["tini", "--", "sandboxq", "worker"]

# Left empty on purpose (and it clears the base image's CMD ["python3"]): the
# arguments are yours, e.g. `docker run IMAGE myapp.jobs --procs auto`.
# With no arguments the worker serves the modules named in $SANDBOXQ_APP.
CMD []
