"""The bodies of the OpenAI-compatible routes (`service.http.openai`), checked: what each
route takes, the parameters this server refuses rather than ignore, and the model's own
input made from them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import BadRequest, InvalidInput, NotFound
from service.http.io import parse_json
from service.models import Model, ModelRegistry

B = TypeVar("B", bound=BaseModel)

#: Most texts in one /v1/embeddings request (OpenAI's own limit).
MOST_EMBEDDING_INPUTS = 2048
_Text = Annotated[str, Field(min_length=1)]
_TAG = re.compile(r"[-\[]")


class Body(BaseModel):
    """A request body: the fields a route knows are checked; any other field, unless null,
    is refused with a 400 naming it (a client must not believe a setting took effect)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Annotated[str, Field(min_length=1)]
    user: str | None = None  # accepted, and not used


class EmbeddingsBody(Body):
    input: _Text | Annotated[list[_Text], Field(min_length=1, max_length=MOST_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class GenerationBody(Body):
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: _Text | Annotated[list[_Text], Field(max_length=4)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: Options | None = None
    # Taken at their defaults only: anything else is refused by name.
    n: Literal[1] | None = None
    top_p: Literal[1] | None = None
    frequency_penalty: Literal[0] | None = None
    presence_penalty: Literal[0] | None = None

    def limit(self) -> int | None:
        return self.max_tokens


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[Part], Field(min_length=1)]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(GenerationBody):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1024)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(GenerationBody):
    prompt: _Text | Annotated[list[_Text], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    logprobs: None = None
    suffix: None = None

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def parse(raw: bytes, kind: type[B]) -> B:
    """The body as ``kind``: 400 (in OpenAI's shape) for a field that does not fit, or for
    one this server does not support."""
    return checked(parse_json(raw), kind)


def checked(data: Any, kind: type[B]) -> B:
    """A body already read as JSON (a request, or a line of a batch file) as ``kind``."""
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.")
    try:
        body = kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False)[0]
        # Union members' tags ("constrained-str", "list[...]") left out of the place.
        where = ".".join(str(p) for p in first["loc"] if not _TAG.search(str(p)))
        field = str(first["loc"][0]) if first["loc"] else None
        if field in _ONLY_DEFAULT:
            raise BadRequest(
                f"'{field}' is supported only at its default ({_ONLY_DEFAULT[field]}) here.",
                param=field,
            ) from None
        raise BadRequest(f"Invalid '{where}': {first['msg']}.", param=field) from None
    for name, value in (body.model_extra or {}).items():
        if value is not None:
            raise BadRequest(f"'{name}' is not supported by this server.", param=name)
    return body


_ONLY_DEFAULT = {
    "n": "1",
    "top_p": "1",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "logprobs": "none",
    "echo": "false",
    "best_of": "1",
    "suffix": "none",
}


def no_such_model(name: str) -> NotFound:
    return NotFound(
        f"The model '{name}' does not exist here (GET /v1/models lists them).",
        param="model",
        code="model_not_found",
    )


def served(registry: ModelRegistry, name: str, task: str, route: str) -> Model:
    """The model a request names, if it serves ``task``: 404 for a model not served here,
    400 naming the model's task for one that does not do this."""
    try:
        model = registry.get(name)
    except NotFound:
        raise no_such_model(name) from None
    if model.task != task:
        what = f"an {model.task} model" if model.task == "embeddings" else None
        what = what or (f"a {model.task} model" if model.task else "a model of no task")
        raise BadRequest(
            f"The model '{name}' is {what}; {route} serves {task} models.",
            param="model",
            code="wrong_model_task",
        )
    return model


def prompt_of(messages: list[Message]) -> str:
    """Messages as one prompt, for a model that takes a prompt: a line a message, its role
    first, then the line the model completes. (A model with a template of its own takes
    ``messages`` in its input instead.)"""
    lines = [f"{message.role}: {message.text()}" for message in messages]
    return "\n".join([*lines, "assistant:"])


def generation_input(
    model: Model, body: GenerationBody, prompt: str, messages: Any
) -> tuple[dict[str, Any], Any]:
    """The model's input for a generation request, as JSON and checked against its schema
    (as the model takes it): ``messages`` (as dicts) where the model takes them, else
    ``prompt``; and each of max_tokens, stop, temperature and seed given, where the model
    takes it (a 400 where it does not)."""
    fields = model.input_schema.get("properties", {})
    value: dict[str, Any] = {}
    if "messages" in fields and messages is not None:
        value["messages"] = messages
    else:
        value["prompt"] = prompt
    given = {
        "max_tokens": body.limit(),
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "temperature": body.temperature,
        "seed": body.seed,
    }
    for name, setting in given.items():
        if setting is None:
            continue
        if name not in fields:
            raise BadRequest(
                f"The model '{model.name}' does not take '{name}'.", param=_param(name, body)
            )
        value[name] = setting
    try:
        return value, model.validate(value)
    except InvalidInput as exc:
        first = exc.detail[0] if exc.detail else {}
        where = [str(part) for part in first.get("loc", ())][1:]  # without "input"
        param = _param(where[0], body) if where else None
        raise BadRequest(
            f"The model '{model.name}' does not take this request: "
            f"{'.'.join(where) or 'its input'}: {first.get('msg', 'does not fit')}.",
            param=param,
        ) from None


def _param(field: str, body: GenerationBody) -> str:
    """The request field a model input field came from."""
    if field == "max_tokens" and isinstance(body, ChatBody) and body.max_completion_tokens:
        return "max_completion_tokens"
    return field


def chat_input(model: Model, body: ChatBody) -> tuple[dict[str, Any], Any]:
    """A chat request's input for ``model``: as JSON, and checked."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    for message in messages:
        if not isinstance(message["content"], str):
            message["content"] = "".join(part["text"] for part in message["content"])
    return generation_input(model, body, prompt_of(body.messages), messages)


def completion_input(model: Model, body: CompletionBody) -> tuple[dict[str, Any], Any]:
    """A text completion request's input for ``model``: as JSON, and checked."""
    return generation_input(model, body, body.text(), [{"role": "user", "content": body.text()}])


def texts_of(model: Model, body: EmbeddingsBody) -> list[Any]:
    """The texts of an embeddings request, each checked as ``model``'s input."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    values = []
    for at, text in enumerate(texts):
        try:
            values.append(model.validate(text))
        except InvalidInput as exc:
            where = "input" if isinstance(body.input, str) else f"input[{at}]"
            raise BadRequest(f"{where}: {exc.message}", param="input") from None
    return values
