"""Request bodies as msgspec structs: the shape check for every route.

Unknown fields are ignored (clients send extras, as OpenAI's SDK does); wrong types
are rejected with msgspec's path-precise message (`Expected `str`, got `int` - at
`$.message``). Bounds are not here: see `limits.py`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, Union

import msgspec

from .errors import RequestError


class Sampling(msgspec.Struct, kw_only=True):
    """The sampling fields every door accepts (bounds: limits.sampling)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: Union[str, list[str], None] = None


class ChatRequest(Sampling, kw_only=True):
    message: str
    stream: bool = False
    conversation_id: str | None = None
    system: str | None = None
    # Ground the answer in the owner's documents: true (the `default` collection),
    # {"collection": NAME} or a list of document ids (checked by chat/grounding.py).
    documents: Any = None
    # The client's own id for this message (1-64 printable ASCII): sent again (a retry,
    # a page reloaded), the message is not stored or answered twice.
    client_id: str | None = None
    # The model to answer with (GET /api/models lists them); None: the conversation's
    # last one, else the server's default.
    model: str | None = None


class WSFrame(msgspec.Struct, kw_only=True):
    type: str


class WSChat(ChatRequest, kw_only=True):
    type: Literal["chat"]


class WSResume(msgspec.Struct, kw_only=True):
    """Resume an answer after a dropped connection: every event with seq > `after`."""

    type: Literal["resume"]
    answer_id: str
    after: int = -1


class TextPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ToolCallFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(msgspec.Struct, kw_only=True):
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class OAIMessage(msgspec.Struct, kw_only=True):
    role: str
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class JSONSchemaFormat(msgspec.Struct, kw_only=True):
    name: str | None = None
    schema: Any = msgspec.UNSET
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct, kw_only=True):
    type: str
    json_schema: JSONSchemaFormat | None = None
    schema: Any = msgspec.UNSET  # llama-server's extension: {"type": "json_object", "schema": {...}}


class FunctionDef(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: Any = msgspec.UNSET
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True):
    type: str
    function: FunctionDef


class NamedFunction(msgspec.Struct, kw_only=True):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True):
    type: str
    function: NamedFunction


class OAIChatRequest(Sampling, kw_only=True):
    messages: list[OAIMessage]
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[str, NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    documents: Any = None  # our extension, as on /api/chat (openai client: extra_body)


class OAICompletionRequest(Sampling, kw_only=True):
    """`POST /v1/completions` (OpenAI's legacy text completions)."""

    # str | list[str] | list[int] | list[list[int]]: msgspec cannot tell list types
    # apart in a union, so openai_completions.py checks the shape.
    prompt: Any
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = None


T = TypeVar("T")


def decode(body: bytes, cls: type[T]) -> T:
    """Parse and shape-check a JSON body, or raise RequestError (400). Its size is bounded
    before it gets here (`http.read_body`, the WebSocket frame limit)."""
    if not body.strip():
        raise RequestError("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as e:
        raise RequestError(f"invalid request: {e}", code="invalid_request") from None
    except msgspec.DecodeError as e:
        raise RequestError(f"the body is not valid JSON: {e}", code="invalid_json") from None
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not valid UTF-8 ({e.reason} at byte {e.start})", code="invalid_json") from None
    except RecursionError:
        raise RequestError("the body nests arrays or objects too deeply", code="invalid_json") from None
