"""Reading a request body as JSON, with every way it can be wrong answered by a 400 that says how.

``json.loads`` alone lets three kinds of client input through to a 500: nesting deep enough to hit
Python's recursion limit (``RecursionError``), an integer longer than Python converts
(``ValueError``), and a lone UTF-16 surrogate written as an escape (``"\\ud800"``), which parses
into a ``str`` that cannot be encoded again when the text is sent upstream or echoed back.
"""

from __future__ import annotations

import json
from typing import Any

from certaindex.server.errors import bad_request

#: Deepest nesting taken (objects and arrays). OpenAI requests nest a few levels; tool schemas a
#: few dozen at most. Deeper is refused before anything walks it recursively.
MAX_JSON_DEPTH = 128


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; raises a 400 ProxyError naming what is wrong with it."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request(f"the body's JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit conversion limit
        raise bad_request(f"the body's JSON holds a value that cannot be read: {exc}") from None
    if not isinstance(payload, dict):
        raise bad_request("the body must be a JSON object")
    check_json_value(payload)
    return payload


def check_json_value(value: Any) -> None:
    """Refuse nesting over :data:`MAX_JSON_DEPTH` and strings that are not valid Unicode (lone
    surrogates), naming where they are. Iterative, so no depth can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"the body's JSON is nested deeper than {MAX_JSON_DEPTH} levels (at {path or 'top'})")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, f"{path}.{key!r}" if path else repr(key))
                stack.append((child, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start:exc.end]
        raise bad_request(f"{path or 'the body'} holds a lone surrogate ({bad.encode('unicode_escape').decode()}) "
                          "at character {0}: not valid Unicode text".format(exc.start),
                          param=path.split(".")[0].split("[")[0] or None) from None
