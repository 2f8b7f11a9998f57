"""Small models for the tests, loaded through MODEL='tests.models:<name>' like a user's."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator

calls: Counter[str] = Counter()
batch_sizes: list[int] = []
gate = threading.Event()
started = threading.Event()

GATE_TIMEOUT = 30.0
SLOW_SECONDS = 2.0


def reset() -> None:
    calls.clear()
    closed.clear()
    made.clear()
    batch_sizes.clear()
    gate.clear()
    started.clear()
    gated_files.clear()


def release() -> None:
    gate.set()


def echo(value: Any) -> Any:
    """Answers its input; counts calls per input so tests can see re-runs."""
    calls[repr(value)] += 1
    return {"echo": value}


class Fragile:
    """Text model that raises on 'boom' and answers the length otherwise."""

    input_type = str

    def predict(self, text: str) -> dict[str, int]:
        calls[text] += 1
        if text == "boom":
            raise RuntimeError("the model exploded")
        return {"length": len(text)}


def gated(value: Any) -> Any:
    """Blocks until a test opens the gate, so a test can look at a job mid-run."""
    started.set()
    if not gate.wait(GATE_TIMEOUT):
        raise TimeoutError("gate never opened")
    return {"echo": value}


def slow(value: Any) -> Any:
    """A two-second model call."""
    started.set()
    threading.Event().wait(SLOW_SECONDS)  # blocks the calling thread like real model work
    return {"echo": value}


def whoami(value: Any) -> dict[str, int]:
    """Answers the process id it ran in (to tell thread from process execution)."""
    return {"pid": os.getpid(), "value": value}


def where(value: Any) -> dict[str, Any]:
    """Answers the thread it ran in; "slow" waits 30 ms first, and ["cpu", ms] computes
    for that many ms of its thread's CPU time (answering the wall time it took too).
    Declares itself cheap."""
    if value == "slow":
        threading.Event().wait(0.03)
    if isinstance(value, list):
        began, cpu = time.perf_counter(), time.thread_time()
        while time.thread_time() - cpu < value[1] / 1000:
            pass
        wall_ms = (time.perf_counter() - began) * 1000
        return {"thread": threading.current_thread().name, "wall_ms": wall_ms}
    return {"thread": threading.current_thread().name}


where.inline = True  # type: ignore[attr-defined]


def varying(value: Any) -> dict[str, str]:
    """Fast for any input but a number, which it takes that many seconds over (a model whose
    cost depends on its input; it declares nothing)."""
    if isinstance(value, int | float):
        time.sleep(value)
    return {"thread": threading.current_thread().name}


class WithHooks:
    """Needs its setup() hook to have run before predict works."""

    input_type = int

    def setup(self) -> None:
        self.offset = 1000
        self.setup_pid = os.getpid()

    def predict(self, value: int) -> dict[str, int]:
        return {"value": value + self.offset, "setup_pid": self.setup_pid, "pid": os.getpid()}


class BatchEcho:
    """Batches; a batch holding 'bad' raises, and so does 'bad' alone."""

    input_type = str

    def predict(self, text: str) -> dict[str, str]:
        if text == "bad":
            raise ValueError("bad input for this model")
        return {"echo": text}

    def predict_batch(self, texts: list[str]) -> list[dict[str, str]]:
        batch_sizes.append(len(texts))
        if "bad" in texts:
            raise ValueError("a bad item spoiled the batch")
        return [{"echo": text} for text in texts]


class Counted:
    """For scripts/chaos: counts its calls per input token in Redis (CHAOS_REDIS_URL),
    so a drill can tell how often each job really ran. Takes ~5 ms per call.
    """

    def setup(self) -> None:
        import redis

        self._redis = redis.Redis.from_url(
            os.environ["CHAOS_REDIS_URL"], retry_on_error=[redis.ConnectionError]
        )

    def predict(self, value: dict[str, Any]) -> dict[str, Any]:
        import redis

        threading.Event().wait(0.005)  # some work, so a kill lands mid-run
        # The count is the drill's instrument, not the system under test: it waits out a
        # Redis restart instead of failing the job.
        for _ in range(300):
            try:
                self._redis.hincrby("chaos:calls", value["token"], 1)
                break
            except redis.ConnectionError:
                threading.Event().wait(0.1)
        return {"token": value["token"], "n": value["n"]}


class DeepOutput:
    """Batches; for the input 'deep' it answers a list nested 300 levels (more than JSON
    writers take), for anything else the input itself."""

    input_type = str

    def predict(self, text: str) -> Any:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: list[str]) -> list[Any]:
        batch_sizes.append(len(texts))
        out: list[Any] = []
        for text in texts:
            value: Any = text
            if text == "deep":
                for _ in range(300):
                    value = [value]
            out.append(value)
        return out


def typed(text: str) -> dict[str, int]:
    """Declares its input and output by annotations alone (no input_type attribute)."""
    return {"length": len(text)}


def paced(value: Any) -> Any:
    """Takes 0.3 s an input (no batch call: a batch of n takes 0.3 n s); counts its calls."""
    threading.Event().wait(0.3)
    calls[repr(value)] += 1
    return value


def poison(value: Any) -> Any:
    """For process execution: the input "poison" ends the process running it (as a crash
    in native code, or the OOM killer, would); any other input is echoed."""
    if value == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"echo": value}


def sleepy(value: Any) -> Any:
    """Takes 10 ms a call, waiting (the GIL is free meanwhile), as I/O or a native model."""
    threading.Event().wait(0.01)
    return value


def journaled(value: Any) -> dict[str, Any]:
    """Takes ``value["seconds"]``, writing `start <tag> <pid>` and `end <tag> <pid>` lines to
    the file $TEST_JOURNAL: which replica ran which job, and how often, across processes."""
    tag, seconds = str(value["tag"]), float(value["seconds"])
    journal = os.environ["TEST_JOURNAL"]
    with open(journal, "a") as out:
        out.write(f"start {tag} {os.getpid()}\n")
    time.sleep(seconds)
    with open(journal, "a") as out:
        out.write(f"end {tag} {os.getpid()}\n")
    return {"pid": os.getpid(), "tag": tag}


class OneAtATime:
    """Batches, one call at a time (concurrency 1, batches of up to 16, its own 50 ms
    window), as a model that uses every core in one call would; a batch holding 'hold'
    waits for the gate."""

    input_type = str
    concurrency = 1
    max_batch_size = 16
    max_batch_delay_ms = 50

    def predict_batch(self, texts: list[str]) -> list[str]:
        batch_sizes.append(len(texts))
        if "hold" in texts:
            started.set()
            gate.wait(GATE_TIMEOUT)
        return texts

    def predict(self, text: str) -> str:
        return self.predict_batch([text])[0]


def _buggy_check(value: Any) -> Any:
    if value == "bug":
        raise RuntimeError("a bug in the input check")  # not a ValueError: pydantic lets it out
    return value


class BuggyCheck:
    """A model whose input check has a bug for the input 'bug': an unexpected exception in
    a request's handling, which must become a plain 500 for that request alone."""

    input_type = Annotated[str, BeforeValidator(_buggy_check)]

    def predict(self, value: str) -> str:
        return value


# -- streaming models ------------------------------------------------------------------------

#: What the streaming test models saw end: the value of each generator whose finally ran;
#: and the chunks `counting` made (in this process).
closed: list[Any] = []
made: list[int] = []


def counting(value: dict[str, Any]) -> Any:
    """Yields {"n": i} for i below value["n"], value.get("every", 0) seconds apart (but
    the first value["fast"] at once); with value["gated"], only once the gate opens. Says
    in `closed` (and in $TEST_JOURNAL, across processes) when its generator is closed."""
    journal = os.environ.get("TEST_JOURNAL")

    def note(line: str) -> None:
        if journal:
            with open(journal, "a") as out:
                out.write(f"{line} {value.get('tag')} {os.getpid()}\n")

    try:
        if value.get("gated") and not gate.wait(GATE_TIMEOUT):
            raise TimeoutError("gate never opened")
        for i in range(int(value["n"])):
            if value.get("every") and i >= value.get("fast", 0):
                threading.Event().wait(float(value["every"]))
            made.append(i)
            note(f"yield {i}")
            yield {"n": i, **({"pad": "x" * value["pad"]} if value.get("pad") else {})}
    finally:
        closed.append(value.get("tag"))
        note("closed")


async def counting_async(value: dict[str, Any]) -> Any:
    """The async twin of `counting`."""
    import asyncio

    try:
        for i in range(int(value["n"])):
            if value.get("every"):
                await asyncio.sleep(float(value["every"]))
            yield {"n": i}
    finally:
        closed.append(value.get("tag"))


class Counter_:
    """A class whose predict is a generator: yields the words of its text."""

    input_type = str

    def predict(self, text: str) -> Any:
        yield from text.split()


def held_stream(value: Any) -> Any:
    """Yields "first", then waits for the gate before "second": a reader sees the first
    chunk while the model still runs."""
    try:
        yield "first"
        started.set()
        if not gate.wait(GATE_TIMEOUT):
            raise TimeoutError("gate never opened")
        yield "second"
    finally:
        closed.append("held")


def bad_stream(value: str) -> Any:
    """Yields two chunks, then fails as ``value`` says: "raise" raises, "set" yields a set
    (not JSON)."""
    yield 1
    yield 2
    if value == "raise":
        raise RuntimeError("the stream broke")
    yield {1, 2}


# -- files ----------------------------------------------------------------------------------
class Upload(BaseModel):
    """A file and a number: the model reads the file and answers what it saw."""

    data: Path
    note: str = ""


def measure(value: Upload) -> dict[str, Any]:
    """The size and SHA-256 of the file it was given, and where it lay (a local path)."""
    calls["measure"] += 1
    body = value.data.read_bytes()
    return {
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "local": value.data.is_file(),
        "suffix": value.data.suffix,
        "note": value.note,
    }


def whole_file(path: Path) -> dict[str, int]:
    """A whole input that is one file (a parameter annotated Path)."""
    return {"size": path.stat().st_size}


class Reverse:
    """Returns its file's bytes reversed, as a file (bytes of a declared type) beside a
    JSON field: the result holds the stored file's URL."""

    output_content_type = "application/octet-stream"
    input_type = Upload

    def predict(self, value: Upload) -> dict[str, Any]:
        if gated_files.is_set():
            gate.wait(GATE_TIMEOUT)
        return {"reversed": value.data.read_bytes()[::-1], "note": value.note}


#: Set: Reverse waits for `release()` before it answers (a job held running).
gated_files = threading.Event()


def copy_back(value: Upload) -> Path:
    """Returns the very file it was given (a Path): the service stores a copy of it."""
    return value.data


class Thumbnailish:
    """Returns PNG-typed bytes (not a real image: the service only stores them)."""

    output_content_type = "image/png"

    def predict(self, size: int) -> bytes:
        return b"\x89PNG" + bytes(size)


def file_lines(value: Upload) -> Any:
    """Streams the lines of its file, one chunk each."""
    with value.data.open() as lines:
        for line in lines:
            yield line.rstrip("\n")


# -- the OpenAI-compatible routes -----------------------------------------------------------
class Vectors:
    """An embeddings model: 8 numbers from the text's SHA-256 (the same text, the same
    vector), and the words it read as its tokens; "crash" fails it. Records its batches."""

    task = "embeddings"
    input_type = str

    def predict(self, text: str) -> dict[str, Any]:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        batch_sizes.append(len(texts))
        if "crash" in texts:
            raise RuntimeError("the vectors broke")
        return [{"embedding": vector_of(t), "tokens": len(t.split())} for t in texts]


def vector_of(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 128 for b in digest[:8]]


class Prompt(BaseModel):
    prompt: str
    max_tokens: int = 64
    stop: list[str] = []
    temperature: float = 0.0


class Talker:
    """A generation model: yields the words of its prompt's last line back, a chunk a word
    (at most max_tokens, cut before a stop string). A prompt with "slowly" takes 10 ms a
    word; one with "boom" fails after two words. Its words and its finally are recorded."""

    task = "generation"
    input_type = Prompt

    def predict(self, value: Prompt) -> Any:
        try:
            words = value.prompt.splitlines()[-1].split()
            text = ""
            for at, word in enumerate(words[: value.max_tokens]):
                piece = word if at == 0 else " " + word
                stop = next((s for s in value.stop if s in text + piece), None)
                if stop is not None:
                    cut = (text + piece)[: (text + piece).index(stop)][len(text) :]
                    if cut:
                        yield cut
                    return
                if at == 2 and "boom" in words:
                    raise RuntimeError("the talker broke")
                made.append(at)
                yield piece
                text += piece
                if "slowly" in words:
                    threading.Event().wait(0.01)
        finally:
            closed.append("talker")


class Chat(BaseModel):
    messages: list[dict[str, str]]
    max_tokens: int = 64


class Templated:
    """A generation model that takes the messages themselves (its own template): answers
    the roles it was given, in one piece (it does not stream)."""

    task = "generation"
    input_type = Chat

    def predict(self, value: Chat) -> str:
        return "/".join(m["role"] for m in value.messages)


def plain_vector(text: str) -> list[float]:
    """An embeddings model that answers the bare vector (no token count)."""
    return vector_of(text)


plain_vector.task = "embeddings"  # type: ignore[attr-defined]
