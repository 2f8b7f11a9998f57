# syntax=docker/dockerfile:1

# Build stage: install the package and its dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY service ./service
# Optional extras, e.g. --build-arg EXTRAS=s3,sklearn,onnx for scikit-learn and ONNX models;
# s3 (the S3 store's client) is in by default: docker-compose.yml keeps files in S3.
ARG EXTRAS="s3"
# DL3013 (pin versions): this installs the project itself; its dependency ranges live in
# setup.cfg, the one place they are kept.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

# Final stage: the virtualenv only; no compiler, no pip cache, no tests.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Numeric, so a runtime that checks for non-root can tell without /etc/passwd.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service.http.healthcheck"]
# Exec form: the server is PID 1 and gets SIGTERM itself (graceful shutdown).
CMD ["python", "-m", "service"]
