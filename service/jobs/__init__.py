"""The jobs layer: submitting jobs, what workers read and run, the records they end,
waiting for them, dead letters and webhooks. Built on `service.execution` (running a
model), `service.models` and `service.redis`; used by `service.http`."""
