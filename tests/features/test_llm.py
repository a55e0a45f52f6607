"""LLM extraction against a local stub chat-completions server (no network)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from features.llm import (
    PROMPTS,
    ChatCompletionsProvider,
    EntityReviews,
    LLMConfig,
    LLMError,
    OfflineProvider,
    build_provider,
    extractive_summary,
    parse_price,
    parse_types,
)

PIZZA = EntityReviews(
    "b_pizza",
    "item",
    ("Great crust and fresh basil. A bit pricey.", "Slow service but great crust."),
    price_tier=2,
    categories=("Pizza", "Italian", "Restaurants"),
)


class Stub:
    """A chat-completions server whose replies follow a script, then a default.

    Script steps: ("ok", content) | (status:int,) | ("sleep", seconds) | ("garbage",).
    The default answers by prompt kind.  Records bodies, headers and peak concurrency.
    """

    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = []
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.inflight = 0
        self.peak = 0
        self.delay = 0.0
        self.lock = threading.Lock()

    def default(self, prompt: str) -> str:
        if prompt.startswith(PROMPTS["price"]):
            return "Fair price."
        if prompt.startswith(PROMPTS["types"]):
            return "'Pizza', 'Italian restaurant'"
        return "  Loved the crust;\n slow service. "

    def respond(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
            self.headers.append(dict(handler.headers))
            step = self.script.pop(0) if self.script else ("default",)
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
        # The reply is built first and sent only after `inflight` drops: a client that
        # gets its answer may start its next request at once, and counting that overlap
        # would make `peak` exceed the client's real concurrency.
        try:
            time.sleep(self.delay)
            if step[0] == "sleep":
                time.sleep(step[1])
                step = ("default",)
            if isinstance(step[0], int):
                status, extra, out = step[0], {"Retry-After": "0"}, b'{"error": {"message": "slow down"}}'
            elif step[0] == "garbage":
                status, extra, out = 200, {}, b"<html>gateway hiccup</html>"
            else:
                content = (
                    step[1] if step[0] == "ok" else self.default(body["messages"][0]["content"])
                )
                out = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 100,
                            "completion_tokens": 10,
                            "total_tokens": 110,
                        },
                    }
                ).encode()
                status, extra = 200, {"Content-Type": "application/json"}
        finally:
            with self.lock:
                self.inflight -= 1
        handler.send_response(status)
        for k, v in extra.items():
            handler.send_header(k, v)
        if status == 200:
            handler.send_header("Content-Length", str(len(out)))
        handler.end_headers()
        handler.wfile.write(out)


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            try:
                state.respond(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and hung up

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def client(url: str, tmp_path: Path, **kw: Any) -> ChatCompletionsProvider:
    args: dict[str, Any] = dict(
        cache_dir=str(tmp_path / "cache"), backoff_s=0.01, timeout_s=2.0, max_concurrency=1
    )
    return ChatCompletionsProvider(url, "stub-model", **{**args, **kw})


def test_three_prompts_parsed_and_accounted(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    llm = client(url, tmp_path, api_key="sk-test", price_per_mtok=(1.0, 2.0))
    (got,) = llm.extract([PIZZA])
    assert got.summary == "Loved the crust; slow service."
    assert got.price == "fair" and got.types == ["pizza", "italian"]
    assert len(state.bodies) == 3
    body = state.bodies[0]
    assert body["model"] == "stub-model" and body["temperature"] == 0
    assert "- Great crust and fresh basil. A bit pricey." in body["messages"][0]["content"]
    assert state.headers[0]["Authorization"] == "Bearer sk-test"
    meta = llm.usage.to_meta()
    assert meta == {
        "requests": 3, "retries": 0, "cache_hits": 0, "prompt_tokens": 300,
        "completion_tokens": 30, "cost_usd": pytest.approx((300 * 1.0 + 30 * 2.0) / 1e6),
    }  # fmt: skip


def test_retries_429_5xx_and_garbage(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    state.script = [(429,), (503,), ("garbage",), ("ok", "Overpriced")]
    llm = client(url, tmp_path, cache_dir="")
    assert llm.complete(PROMPTS["price"], "- pricey") == "Overpriced"
    assert (llm.usage.requests, llm.usage.retries) == (4, 3)


def test_timeout_is_retried_then_gives_up(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    state.script = [("sleep", 1.0)]
    llm = client(url, tmp_path, cache_dir="", timeout_s=0.3)
    assert llm.complete(PROMPTS["summary"], "- x")
    assert llm.usage.retries == 1
    state.script = [("sleep", 1.0)] * 3
    llm = client(url, tmp_path, cache_dir="", timeout_s=0.3, max_retries=2)
    with pytest.raises(
        LLMError, match=r"/v1/chat/completions: no answer within timeout_s=0\.3 after 3 attempts"
    ):
        llm.complete(PROMPTS["summary"], "- x")


def test_client_error_not_retried(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    state.script = [(401,)]
    with pytest.raises(LLMError, match="HTTP 401 \\(not retried"):
        client(url, tmp_path, cache_dir="").complete("p", "t")
    assert len(state.bodies) == 1


def test_malformed_answers_degrade(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    state.script = [("ok", "   "), ("ok", "Hard to say from these reviews."), ("ok", "N/A")]
    (got,) = client(url, tmp_path).extract([PIZZA])
    assert got.summary == extractive_summary(PIZZA.texts)  # empty summary -> extractive
    assert got.price == "none" and got.types == []


def test_cache_keyed_by_model_prompt_and_input(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    first = client(url, tmp_path).extract([PIZZA])
    again = client(url, tmp_path)
    assert again.extract([PIZZA]) == first
    assert len(state.bodies) == 3 and again.usage.cache_hits == 3 and again.usage.requests == 0
    other = EntityReviews("b_pizza", "item", ("Different review.",))
    client(url, tmp_path).extract([other])
    assert len(state.bodies) == 6  # new input -> new requests
    ChatCompletionsProvider(url, "other-model", cache_dir=str(tmp_path / "cache")).extract([PIZZA])
    assert len(state.bodies) == 9  # new model -> new requests
    assert len(list((tmp_path / "cache").glob("*.json"))) == 9


def test_concurrency_is_bounded(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    state.delay = 0.05
    ents = [EntityReviews(f"b{i}", "item", (f"review {i}",)) for i in range(4)]
    client(url, tmp_path, max_concurrency=2).extract(ents)
    assert len(state.bodies) == 12 and state.peak == 2


def test_no_reviews_no_request(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    (got,) = client(url, tmp_path).extract([EntityReviews("u", "user", ())])
    assert (got.summary, got.price, got.types, state.bodies) == ("", "none", [], [])


def test_offline_provider() -> None:
    (got,) = OfflineProvider().extract([PIZZA])
    assert got.summary == "Great crust and fresh basil. A bit pricey. Slow service but great crust."
    assert got.price == "fair" and got.types == ["pizza", "italian"]
    assert isinstance(build_provider(LLMConfig()), OfflineProvider)


@pytest.mark.parametrize(
    ("answer", "price"),
    [
        ("Overpriced", "overpriced"),
        ("fair price", "fair"),
        ("Low price.", "cheap"),
        ("The category is: fair price, definitely not overpriced", "fair"),
        ("I cannot tell.", "none"),
        ("", "none"),
    ],
)
def test_parse_price(answer: str, price: str) -> None:
    assert parse_price(answer) == price


@pytest.mark.parametrize(
    ("answer", "types"),
    [
        ("'Sushi bar'", ["sushi bar"]),
        ("Type: 'Mexican', 'Taqueria'", ["mexican", "taqueria"]),
        ("1. Pizza restaurant\n2. Italian\n- pizza", ["pizza", "italian"]),
        (", ".join(f"t{i}" for i in range(20)), [f"t{i}" for i in range(11)]),
    ],
)
def test_parse_types(answer: str, types: list[str]) -> None:
    assert parse_types(answer) == types
