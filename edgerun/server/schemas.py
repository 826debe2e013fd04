"""Request bodies of the OpenAI-compatible endpoints as strict pydantic models.

They are the single source of truth for what a body may hold: the handlers validate every
body against them (unknown fields are refused by name, JSON types are not coerced: "9" is
not a number and `true` is not 1) and `/openapi.json` documents them, so schema-driven
clients and fuzzers can generate valid requests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ChatCompletionRequest", "CompletionRequest", "ROLES", "first_error", "openapi_components"]

ROLES = ("system", "user", "assistant", "tool")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """One part of a message's content; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, description="accepted for compatibility; not shown to the model")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str = Field(description="the served model's name (or one of its aliases)")
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False,
                                      description="0 is greedy; otherwise at least 1e-4")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    min_p: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False)
    repeat_penalty: float | None = Field(None, ge=1e-3, le=1e3, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                           description="only 0 is supported")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                            description="only 0 is supported")
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    stop: str | list[str] | None = Field(None, description="up to 16 non-empty strings")
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None
    logprobs: bool | None = Field(None, description="only false is supported")
    user: str | None = Field(None, description="an end-user id; accepted, not used")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] = Field(
        description="a string, a list of token ids, or a list holding one string")


_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest, ChatMessage, TextPart,
                                        StreamOptions)
_FIELDS = {name for m in _MODELS for name in m.model_fields}


def first_error(e: ValidationError) -> tuple[str, str]:
    """(param, message) for the first error: param as `messages[0].role`, the path of fields
    and list indexes (pydantic's union-member labels left out)."""
    err = e.errors(include_url=False)[0]
    param = ""
    extra = err["type"] == "extra_forbidden"  # then the last part is the unknown field's name
    for part in err["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in _FIELDS or extra:
            param += f".{part}" if param else part
        else:
            break
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (not supported by this server)"
    elif err["type"] == "missing":
        msg = "is required"
    return param or "body", f"'{param}': {msg}" if param else msg


def openapi_components() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(per-endpoint requestBody objects, component schemas) for the OpenAPI document."""
    schemas: dict[str, dict[str, Any]] = {}
    bodies: dict[str, Any] = {}
    for m in (ChatCompletionRequest, CompletionRequest):
        s = m.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(s.pop("$defs", {}))
        schemas[m.__name__] = s
        bodies[m.__name__] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{m.__name__}"}}}}
    return bodies, schemas
