"""``python -m gateway.rest.write_openapi > docs/openapi.json``: the OpenAPI document of the
route table for the default base path (what tests/test_openapi.py compares docs/ with)."""

from __future__ import annotations

import sys

import orjson

from gateway.config import Rest
from gateway.rest.app import ROUTES, SCOPES
from gateway.rest.openapi import document


def main() -> None:
    sys.stdout.write(orjson.dumps(document(ROUTES, Rest().base_path, scopes=SCOPES),
                                  option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
