"""A bounded schemathesis run against the server's own `/openapi.json` (live server, FakeRunner
engine): generated valid and invalid bodies for every documented operation, 0 answers >= 500."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from edgerun.server.options import ServerSafety  # noqa: E402
from edgerun.serving.engine import Engine  # noqa: E402
from tests.test_scheduler import FakeRunner  # noqa: E402
from tests.test_server_hostile import AUTH, Server  # noqa: E402

EXAMPLES = 30  # per operation and mode: bounded for CI on 2 cores


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    s = Server(Engine(FakeRunner(num_blocks=256, block_size=4, n_ctx=256), max_queue=256).start(),
               ServerSafety())
    yield s
    s.stop()


def fuzz_operation(srv: Server, op, mode, statuses: Counter[int], failures: list[str]) -> None:  # type: ignore[no-untyped-def]
    """EXAMPLES generated requests to one operation; counts statuses, records answers >= 500."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:  # type: ignore[no-untyped-def]
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
            body["max_tokens"] = 8  # keep generations short
        headers = {**AUTH, **{k: str(v) for k, v in (case.headers or {}).items()}}
        if isinstance(body, (dict, list, int, float, bool)) or body is None:
            kw: dict = {"json": body}
        elif isinstance(body, (bytes, str)):
            ctype = case.media_type or "text/plain"
            kw = {"content": body, "headers": {**headers, "Content-Type": ctype}}
        else:  # schemathesis' "no body" marker
            kw = {}
        kw.setdefault("headers", headers)
        r = httpx.request(op.method.upper(), srv.url + case.formatted_path, params=case.query,
                          timeout=60, **kw)
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{op.method} {op.path} {body!r:.300} -> {r.status_code} {r.text[:200]}")

    try:
        run()
    except Unsatisfiable:  # an operation with no inputs has no invalid form (GET /health)
        pass


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors_from_schema(srv: Server, mode: str) -> None:
    doc = httpx.get(srv.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in ops} >= {("POST", "/v1/chat/completions"),
                                                              ("POST", "/v1/completions")}
    for op in ops:
        fuzz_operation(srv, op, schemathesis.GenerationMode(mode), statuses, failures)
    print(f"\n{mode}: status counts {dict(statuses)}")
    assert not failures, failures[:5]
    assert sum(statuses.values()) > 0
