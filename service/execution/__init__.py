"""The execution layer: how a model is called. Batching concurrent calls, threads and
model processes, calls on the loop for cheap models, timers for many timeouts, and one
Redis round trip for many callers (coalescing)."""
