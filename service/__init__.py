"""A model server: HTTP predictions, answered at once or queued on a Redis Stream."""

__version__ = "0.1.0"
