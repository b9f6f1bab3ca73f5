"""One process for tests/test_cache_redis.py: one chat call through the official SDK, then what holyroute said of it.

Run as ``python -m tests._cache_worker CONFIG`` from the repository root; prints one JSON line: the answer's id and
content, and the ``cache`` and ``saved_usd`` of the call's ``holyroute.request`` event.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai

import holyroute


def main() -> None:
    events: list[dict[str, Any]] = []

    def sink(name: str, fields: dict[str, Any]) -> None:
        if name == "holyroute.request":
            events.append(dict(fields))

    http = holyroute.client(sys.argv[1], sinks=[sink], log=False)
    with openai.OpenAI(api_key="x", base_url="http://unused.invalid/v1", http_client=http, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "same question"}], temperature=0
        )
    (event,) = events
    print(json.dumps({"id": answer.id, "content": answer.choices[0].message.content, "cache": event["cache"],
                      "saved_usd": event.get("saved_usd"), "cost_usd": event["cost_usd"]}))  # fmt: skip


if __name__ == "__main__":
    main()
