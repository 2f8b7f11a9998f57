"""The observability layer: Prometheus metrics, the queue's figures read from Redis,
OpenTelemetry traces and the log format."""
