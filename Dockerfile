# syntax=docker/dockerfile:1
#
# One image for every deployable of the mesh:
#   docker run IMAGE gateway                 -> HTTP webhook gateway (port 8080)
#   docker run IMAGE serve customer          -> gRPC service (50051; billing 50052, crm-export 50053)
#
# Runs as an unprivileged user and writes nothing outside /tmp, so it runs with a read-only
# root filesystem (`docker run --read-only`, or readOnlyRootFilesystem in Kubernetes).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the dependencies, then the project ---------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies get their own layer, rebuilt only when they change: exactly the versions in
# requirements.lock (scripts/lock resolves [project].dependencies of pyproject.toml for this
# platform), so two builds of one commit install the same packages.
# The contracts (generated stubs) are a distribution of their own, installed from their folder
# in the same command so pip takes the project's requirement on them from there.
COPY pyproject.toml requirements.lock ./
COPY contracts ./contracts
RUN pip install --no-cache-dir ./contracts -r requirements.lock

# The project itself (the readme is part of its metadata).
COPY README.md ./
COPY gateway ./gateway
COPY services ./services
COPY ops ./ops
COPY launcher ./launcher
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && python -m compileall -q /opt/venv/lib

# --- runtime: the virtualenv on a clean slim base, as a non-root user ---------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stripe-sync-mesh" \
      org.opencontainers.image.description="Keeps an ERP ledger and a CRM in step with Stripe: webhook gateway and gRPC services"

RUN groupadd --system --gid 10001 syncmesh \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin syncmesh

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

COPY --from=build /opt/venv /opt/venv

# The only writable place the app needs; Kubernetes mounts an emptyDir here.
VOLUME ["/tmp"]
WORKDIR /tmp

USER 10001:10001
EXPOSE 8080 50051 50052 50053

ENTRYPOINT ["syncmesh"]
CMD ["gateway"]
