"""Typed keys for everything stored on the aiohttp application."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from .batching import Batchers
from .dead_letters import DeadLetters
from .durable import Durable
from .embedded import RedisServer
from .executor import Executor
from .keys import Partitions
from .lane import DirectLane
from .lifecycle import Lifecycle, SyncGate
from .metrics import Metrics
from .models import ModelRegistry
from .queue import JobQueue
from .results import ResultStore
from .settings import Settings
from .tenants import Limiter, Tenant, Tenants
from .tracing import Tracing
from .waiting import Completions

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
SYNC_GATE = web.AppKey("sync_gate", SyncGate)
REQUEST_ID = web.RequestKey("request_id", str)
#: The caller's tenant (set when keys are checked; absent: the default tenant).
TENANT = web.RequestKey("tenant", Tenant)
REDIS_URL = web.AppKey("redis_url", str)
REDIS = web.AppKey("redis", Redis)
PARTITIONS = web.AppKey("partitions", Partitions)
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
OPENAPI_SPEC = web.AppKey("openapi_spec", dict[str, Any])
COMPLETIONS = web.AppKey("completions", Completions)
WORKER_TASKS = web.AppKey("worker_tasks", list[asyncio.Task[None]])
TENANTS = web.AppKey("tenants", Tenants)
LIMITER = web.AppKey("limiter", Limiter)
#: Present only when traces are on (`service.tracing`).
TRACING = web.AppKey("tracing", Tracing)
