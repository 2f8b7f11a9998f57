"""Prediction ids: random UUID4 strings, from a buffer of OS randomness.

uuid.uuid4() makes one getrandom() system call per id, which showed as 13% of the async
submit path's CPU time. Reading the OS randomness 4 KiB at a time keeps ids just as
unguessable (they are the only key to a job's result) for a fraction of the cost.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096
_lock = threading.Lock()
_buffer = bytearray()


def _forget_after_fork() -> None:
    # A forked child must not hand out the ids its parent will also hand out.
    _buffer.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def new_id() -> str:
    """A random (version 4, RFC 4122 variant) UUID in its canonical string form."""
    with _lock:
        if len(_buffer) < 16:
            _buffer.extend(os.urandom(_CHUNK))
        raw = bytes(_buffer[:16])
        del _buffer[:16]
    h = raw.hex()
    variant = "89ab"[raw[8] >> 6 & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"
