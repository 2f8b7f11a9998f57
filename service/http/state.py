"""Typed keys for everything stored on the aiohttp application."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from service.execution.batching import Batchers
from service.execution.executor import Executor
from service.http.lifecycle import Lifecycle, SyncGate
from service.http.tenants import Limiter, Tenant, Tenants
from service.jobs.batches import Batches
from service.jobs.dead_letters import DeadLetters
from service.jobs.files import Files
from service.jobs.lane import DirectLane
from service.jobs.outputs import Outputs
from service.jobs.queue import JobQueue
from service.jobs.store import ResultStore
from service.jobs.streams import Streams
from service.jobs.waiting import Waiters
from service.jobs.webhooks import Policy
from service.jobs.worker import StreamSlots
from service.models import ModelRegistry
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.redis.calls import Scripts
from service.redis.durable import Durable
from service.redis.embedded import RedisServer
from service.redis.keys import Partitions
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
#: Where webhooks may go (WEBHOOK_ALLOWED_HOSTS, WEBHOOK_ALLOW_PRIVATE).
WEBHOOK_POLICY = web.AppKey("webhook_policy", Policy)
METRICS = web.AppKey("metrics", Metrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
SYNC_GATE = web.AppKey("sync_gate", SyncGate)
REQUEST_ID = web.RequestKey("request_id", str)
#: The caller's tenant (set when keys are checked; absent: the default tenant).
TENANT = web.RequestKey("tenant", Tenant)
REDIS_URL = web.AppKey("redis_url", str)
REDIS = web.AppKey("redis", Redis)
PARTITIONS = web.AppKey("partitions", Partitions)
SCRIPTS = web.AppKey("scripts", Scripts)
STREAMS = web.AppKey("streams", Streams)
EMBEDDED_REDIS = web.AppKey("embedded_redis", RedisServer)
MODELS = web.AppKey("models", ModelRegistry)
BATCHERS = web.AppKey("batchers", Batchers)
EXECUTOR = web.AppKey("executor", Executor)
QUEUE = web.AppKey("queue", JobQueue)
#: Present only with DURABLE_SUBMIT.
DURABLE = web.AppKey("durable", Durable)
LANE = web.AppKey("lane", DirectLane)
RESULTS = web.AppKey("results", ResultStore)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)
OUTPUTS = web.AppKey("outputs", Outputs)
STREAM_SLOTS = web.AppKey("stream_slots", StreamSlots)
#: The files of jobs: the blob store (BLOB_URL) and their lifetimes.
FILES = web.AppKey("files", Files)
#: The batches and files of the OpenAI-compatible routes.
BATCHES = web.AppKey("batches", Batches)
OPENAPI_SPEC = web.AppKey("openapi_spec", dict[str, Any])
WAITERS = web.AppKey("waiters", Waiters)
WORKER_TASKS = web.AppKey("worker_tasks", list[asyncio.Task[None]])
TENANTS = web.AppKey("tenants", Tenants)
#: The admin key's check (ADMIN_API_KEY), when it is set.
ADMIN = web.AppKey("admin", Tenants)
LIMITER = web.AppKey("limiter", Limiter)
#: Present only when traces are on (`service.observability.tracing`).
TRACING = web.AppKey("tracing", Tracing)
