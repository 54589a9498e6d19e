"""GET /openapi.json: the HTTP API described in OpenAPI 3.1, public.

The document is kept by hand in ``openapi.yaml`` beside this module (the views parse
their requests themselves, so there is nothing to generate it from); the tests compare it
with the app's routes and the roles they need, and fuzz a running server against it.
"""
from __future__ import annotations

import functools
import json
from importlib import resources

import yaml
from flask import Blueprint, Response

blueprint = Blueprint("openapi", __name__)


@functools.cache
def document() -> dict:
    """The document, read once per process."""
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@functools.cache
def _document_json() -> str:
    return json.dumps(document(), indent=1)


@blueprint.get("/openapi.json")
def openapi_document():
    return Response(_document_json(), mimetype="application/json",
                    headers={"Cache-Control": "no-cache"})
