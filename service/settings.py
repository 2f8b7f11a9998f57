"""Every setting of the service: read from the environment, mirrored by CLI flags."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.redis.url import parse as parse_redis_url


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Service settings. Environment variables use the upper-case field name (``PORT``)."""

    # An empty variable (e.g. `MODELS_FILE=` from a compose file) means "not set".
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_ignore_empty=True)

    host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    redis_url: str | None = Field(
        None,
        description="Redis to use: redis://host:6379/0, redis+sentinel://host:26379/mymaster, "
        "redis+cluster://host:7000,host:7001. Unset: start a private redis-server.",
    )

    @field_validator("redis_url")
    @classmethod
    def _known_redis_url(cls, value: str | None) -> str | None:
        if value:
            parse_redis_url(value)  # BadRedisUrl (a ValueError) names what is wrong
        return value

    model: str = Field(
        "service.models.sentiment:VaderSentiment",
        description="The model named 'default': 'module:attr', 'file.py:attr', or a "
        ".joblib/.pkl/.onnx file. Empty: none.",
    )
    models: str = Field(
        "", description="More models, as 'name=spec,name=spec' (same spec forms as MODEL)."
    )
    models_file: Path | None = Field(
        None, description="TOML file of models: [models.NAME] spec=..., execution=...."
    )
    default_model: str = Field("default", description="Name of the model POST /predict uses.")
    execution: Literal["thread", "process"] = Field(
        "thread",
        description="Where model code runs: 'thread' (numpy, scikit-learn, onnxruntime) or "
        "'process' (pure-Python, GIL-bound models).",
    )
    process_workers: int = Field(
        2,
        ge=1,
        description="Model processes for models with execution 'process' (ending one for "
        "a call past its deadline, or losing one, touches no call in the others).",
    )
    workers: int = Field(
        2, ge=0, description="Queue worker tasks in this process; 0 makes an API-only replica."
    )
    executor_threads: int = Field(4, ge=1, description="Threads that run model code.")
    max_batch_size: int = Field(
        64,
        ge=1,
        description="Most inputs per model call: concurrent sync requests are gathered up "
        "to it, and a worker reads up to it per XREADGROUP.",
    )
    inline_max_ms: float = Field(
        2.0,
        ge=0,
        description="A thread model that declares itself cheap (inline) and whose batch calls "
        "keep finishing within this many ms of their own time (CPU, or wall time when they "
        "block) is called on the event loop (cheaper than the thread hop); one slower call "
        "sends it back. 0: always threads.",
    )
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Longest wait for a batch to fill (to MAX_BATCH_SIZE or the previous "
        "batch's size; a lone caller never waits). 0: the next event-loop turn.",
    )
    result_ttl_seconds: int = Field(3600, ge=1, description="How long job records are kept.")
    batch_ttl_seconds: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long the files and batches of the OpenAI-compatible batch API are "
        "kept (input, output and error files; a batch's details).",
    )
    stream: str = Field("predictions", description="Redis Stream that holds queued jobs.")
    queue_partitions: int = Field(
        0,
        ge=0,
        description="Streams the queue is split into, each with its own hash tag (a shard of "
        "a Redis Cluster each). 0: 1 on one node, one per primary on a cluster.",
    )
    durable_submit: bool = Field(
        False,
        description="A 202 waits until the job reached a replica of Redis (WAIT), so a "
        "failover cannot lose it; 503 if none confirms within a second.",
    )
    redis_timeout_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest wait for Redis on a request's path (a submit, a read): past it "
        "the request answers 503 with Retry-After, and only the requests whose jobs lie on "
        "that node (its partitions) wait at all.",
    )
    group: str = Field("workers", description="Consumer group that the workers read through.")
    key_prefix: str = Field("prediction:", description="Prefix of job record keys.")
    consumer_name: str = Field(
        default_factory=_default_consumer,
        pattern=r"^[^,\s]+$",
        description="Consumer name of this replica in the group (no commas or spaces).",
    )
    read_block_ms: int = Field(
        1000, ge=1, description="How long an idle worker blocks on XREADGROUP."
    )
    visibility_timeout_seconds: float = Field(
        60.0, gt=0, description="Entries idle longer than this in a consumer are reclaimed."
    )
    max_deliveries: int = Field(
        3, ge=1, description="Deliveries of one job before it goes to the dead-letter stream."
    )
    job_timeout_seconds: float = Field(
        300.0,
        ge=0,
        description="A job not finished this long after submission fails 'timed out' (queue "
        "wait included); a sync call answers 504 after it. 0: no limit.",
    )
    max_queue: int = Field(
        100_000, ge=0, description="Queued jobs beyond which async submits get 429. 0: no limit."
    )
    max_sync_in_flight: int = Field(
        256, ge=1, description="Concurrent sync predictions beyond which requests get 503."
    )
    max_wait_seconds: float = Field(
        60.0, ge=0, description="Cap of 'Prefer: wait=N' and of GET /predict/{id}?wait=N."
    )
    max_bulk: int = Field(1000, ge=1, description="Most inputs in one POST /predict/batch.")
    max_stream_chunks: int = Field(
        10_000,
        ge=1,
        description="Most chunks one call of a streaming model may yield: past it the model "
        "is stopped and the call fails, saying so.",
    )
    stream_threads: int = Field(
        64,
        ge=1,
        description="Threads for streaming calls (each holds one from its first chunk to its "
        "last, mostly waiting): that many streams run at once, and a replica's workers run "
        "that many queued streaming jobs at once, beside their reads.",
    )
    stream_webhook_interval_seconds: float = Field(
        0.5,
        gt=0,
        description="Least time between two 'output' webhook posts of one running streaming "
        "job (its record with the chunks so far).",
    )
    webhook_secret: str | None = Field(
        None, description="Key of the HMAC-SHA256 signature of webhook deliveries."
    )
    webhook_allowed_hosts: str = Field(
        "", description="Comma-separated hosts webhooks may go to (empty: any public host)."
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhooks to private, loopback and link-local addresses."
    )
    webhook_retry_seconds: float = Field(
        5.0,
        gt=0,
        description="Wait before a failed webhook delivery is tried again; it doubles with "
        "each failure, up to 10 minutes.",
    )
    webhook_max_age_seconds: float = Field(
        3600.0, gt=0, description="A webhook delivery is given up this long after its first try."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="How long one webhook POST may take before it counts as failed."
    )
    webhook_deliveries: int = Field(
        16,
        ge=0,
        description="Webhook POSTs one replica sends at once (0: this replica sends none).",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest JSON request body (and the JSON parts of a multipart body, "
        "together); files have their own limit, MAX_FILE_BYTES.",
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1,
        description="Largest file input (an upload, a URL's body, a data: URI), each: past "
        "it the request answers 413 and the upload stops there.",
    )
    blob_url: str = Field(
        "",
        description="Where the bytes of file inputs and outputs live: s3://bucket/prefix "
        "(endpoint and credentials from the AWS_* variables: for replicas on several hosts), "
        "or a folder. Empty: the folder 'files' under DATA_DIR (one host).",
    )
    blob_presign: bool = Field(
        False,
        description="With an S3 store, GET /predict/{id}/files/{name} answers a redirect to "
        "a presigned URL (valid 5 minutes) instead of passing the bytes through.",
    )
    input_url_allowed_hosts: str = Field(
        "", description="Comma-separated hosts input URLs may name (empty: any public host)."
    )
    input_url_allow_private: bool = Field(
        False, description="Allow input URLs to private, loopback and link-local addresses."
    )
    input_url_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest fetch of one input URL (422 past it)."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request body must arrive within this many seconds (408)."
    )
    api_key: str | None = Field(
        None,
        description="If set, every route but health, metrics and docs needs "
        "'Authorization: Bearer <API_KEY>'.",
    )
    api_keys_file: str | None = Field(
        None,
        description="A TOML file of tenants: their keys (SHA-256 digests), rate limits, "
        "queue quotas and weights (see the README, 'Sharing one deployment'). Each tenant "
        "sees only its own jobs; API_KEY, if also set, is one more tenant with no limits.",
    )
    api_keys_poll_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the keys file is checked for changes (SIGHUP reloads it at once).",
    )
    admin_api_key: str | None = Field(
        None,
        description="If set, the admin routes (/admin: dead letters) need "
        "'Authorization: Bearer <ADMIN_API_KEY>'; unset, they answer 403.",
    )
    dashboard: bool = Field(
        True,
        description="Serve the dashboard at /dashboard (its data needs the same key as the "
        "API: a tenant's key shows that tenant's jobs and figures alone, ADMIN_API_KEY shows "
        "all and may replay or purge dead letters).",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="After SIGTERM, everything (requests, batches, deliveries) is done "
        "within this many seconds.",
    )
    data_dir: Path = Field(
        Path("data"),
        description="Folder of the embedded redis-server's AOF, of uploads being received "
        "and (with no BLOB_URL) of stored files.",
    )
    embedded_redis_port: int = Field(
        0, ge=0, le=65535, description="Embedded redis-server port (0: any free port)."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line."
    )
    serve_http: bool = Field(
        True, description="Serve HTTP. false: a worker-only replica (no port, no routes)."
    )
    loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="Event loop: uvloop when installed ('auto'), or asyncio's own."
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """CLI flags mirroring every field of ``Settings``; unset flags leave env/defaults alone."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a prediction model over HTTP with a Redis Stream work queue.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each flag can also be set by the environment variable named like it "
        "in upper case (e.g. --redis-url / REDIS_URL).",
    )
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "hostname-pid" if name == "consumer_name" else "computed"
        else:
            default = field.default
        parser.add_argument(
            _flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description} [env {name.upper()}, default: {default}]",
        )
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by any CLI flags given."""
    args: dict[str, Any] = vars(build_parser().parse_args(argv))
    return Settings(**args)
