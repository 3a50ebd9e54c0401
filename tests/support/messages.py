"""What several end-to-end tests say to a running stack over HTTP: post one message, and
list the caller's tasks (what the tasks back-end really applied)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.stack import Stack


def post(stack: Stack, token: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """``POST /messages`` as the token's user."""
    with httpx.Client(verify=stack.ssl_context(), timeout=30) as c:
        return c.post(
            f"{stack.base_url}/messages",
            json=body,
            headers={"Authorization": f"Bearer {token}", **headers},
        )


def task_titles(stack: Stack, token: str) -> list[str]:
    """The titles of the user's tasks, in the order the tasks back-end created them."""
    r = post(stack, token, {"content": {"type": "task.list"}, "context": {"service": "tasks"}})
    assert r.status_code == 200, r.text
    return [t["title"] for t in r.json()["replies"][-1]["content"]["data"]["tasks"]]
