"""The publish API's request and answers as pydantic models: the view validates with them and
the OpenAPI document is made from them (``openapi()``), so the two cannot drift apart."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import models_json_schema

from app.auth.forms import USERNAME_RULE

MAX_BATCH = 100
KIND_RULE = r"^[A-Za-z0-9_.:-]{1,64}$"
IDEMPOTENCY_RULE = r"^[\x21-\x7e]{1,255}$"  # printable ASCII, no spaces

Username = Annotated[str, Field(pattern=USERNAME_RULE, description="a user's username")]


class PublishRequest(BaseModel):
    """One notification for one user or the same for several (all stored, or none)."""

    model_config = ConfigDict(extra="forbid")

    to: Username | Annotated[list[Username], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description=f"the recipient, or up to {MAX_BATCH} of them"
    )
    kind: str = Field(pattern=KIND_RULE, description="a declared kind the key may send")
    data: JsonValue = Field(default=None, description="any JSON value (finite numbers), what the kind shows")

    def recipients(self) -> list[str]:
        """The recipients, once each, in the order given."""
        names = [self.to] if isinstance(self.to, str) else self.to
        return list(dict.fromkeys(names))


class Published(BaseModel):
    to: Username
    id: int = Field(
        description="the stored notification's id (the SSE id: replayed to a tab that reconnects)"
    )


class PublishResponse(BaseModel):
    notifications: list[Published]


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, in words")
    to: str | None = Field(default=None, description="the recipient at fault, if one is")
    field: str | None = Field(default=None, description="the body's field at fault, if one is")


class JSONRefused(ValueError):
    """A body that is not the JSON we take (the message says why)."""


def _reject(token: str):
    raise JSONRefused(f"{token} is not allowed (numbers must be finite)")


def _finite(token: str) -> float:
    value = float(token)
    if value in (float("inf"), float("-inf")):
        raise JSONRefused(f"{token[:20]} is out of range (numbers must be finite)")
    return value


def strict_json(raw: str | bytes) -> Any:
    """``raw`` parsed as JSON with finite numbers only; JSONRefused otherwise (bad syntax, NaN,
    Infinity, 1e999, nesting too deep for the parser)."""
    try:
        return json.loads(raw, parse_constant=_reject, parse_float=_finite)
    except RecursionError:
        raise JSONRefused("nested too deeply") from None
    except JSONRefused:
        raise
    except ValueError as exc:
        raise JSONRefused(f"not valid JSON: {exc}") from None


ERRORS = {
    "400": "the body is not JSON (or has non-finite numbers), or the Idempotency-Key is not printable ASCII",
    "401": "no key, an unknown key, or a revoked one",
    "403": "the key may not send this kind, or to this recipient",
    "413": "the body is over 64 KB",
    "415": "the body is not application/json",
    "409": "a request with the same Idempotency-Key is still being handled: retry",
    "422": "a field is wrong, a recipient or kind is unknown, or an Idempotency-Key was reused with "
    "another body",
    "429": "over the key's rate limit (Retry-After says when to come back)",
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the publish API."""
    _, defs = models_json_schema(
        [(m, "validation") for m in (PublishRequest, PublishResponse, ErrorResponse)],
        ref_template="#/components/schemas/{model}",
    )
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    responses: dict[str, Any] = {
        "201": {
            "description": "stored and published (a repeated Idempotency-Key: the first answer again)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PublishResponse"}}},
        }
    }
    for status, description in ERRORS.items():
        responses[status] = {"description": description, "content": error}
    responses["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tidings publish API",
            "version": "1",
            "description": "Store a notification for users of the site and push it to their open tabs.",
        },
        "paths": {
            "/api/v1/notifications": {
                "post": {
                    "operationId": "publish",
                    "summary": "Store and publish a notification to one user or a batch",
                    "security": [{"key": []}],
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "a repeat within 24 h with the same key gets the first answer and "
                            "stores nothing",
                            "schema": {"type": "string", "pattern": IDEMPOTENCY_RULE},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/PublishRequest"}}
                        },
                    },
                    "responses": responses,
                }
            }
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "key": {"type": "http", "scheme": "bearer", "description": "tid_… from `flask keys create`"}
            },
        },
    }
