"""A small generated Google Local dump (reviews.json + meta.json) with texts, prices,
categories and review photos, and a chat-completions stub whose answers follow the
reviews it is sent (so a changed review set gives a changed answer).

The stub answers like an LLM would, deterministically:

    summary  "Reviews mention: w1, w2, ..." (the distinct food/price words, sorted)
    price    "Low price" / "Overpriced" / "Fair price" by counting cheap vs pricey words
    types    the cuisines named in the reviews, as "'pizza', 'sushi'"
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from features.llm import PROMPTS

CUISINES = ["pizza", "sushi", "tacos", "ramen", "curry", "burgers"]
RARE = ["dumplings"]  # understood by the stub, never generated: a perturbation's marker
CHEAP = ["cheap", "bargain"]
PRICEY = ["pricey", "expensive"]
FILLER = ["service was slow", "staff were friendly", "great view", "long wait", "clean tables"]


def stub_answer(content: str) -> str:
    """The stub's answer to one chat message (prompt, blank line, 'Reviews:', the list)."""
    words = re.findall(r"[a-z]+", content.split("Reviews:", 1)[-1].lower())
    if content.startswith(PROMPTS["price"]):
        cheap = sum(w in CHEAP for w in words)
        pricey = sum(w in PRICEY for w in words)
        return "Low price" if cheap > pricey else "Overpriced" if pricey > cheap else "Fair price"
    if content.startswith(PROMPTS["types"]):
        found = sorted({w for w in words if w in CUISINES + RARE})
        return ", ".join(f"'{w}'" for w in found) or "none"
    found = sorted({w for w in words if w in CUISINES + RARE + CHEAP + PRICEY})
    return "Reviews mention: " + ", ".join(found) + "."


@dataclass
class AnsweringStub:
    url: str = ""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def answering_stub() -> Iterator[AnsweringStub]:
    """A local OpenAI-compatible server answering with `stub_answer`; counts tokens as words."""
    state = AnsweringStub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][0]["content"]
            answer = stub_answer(content)
            p_tok, c_tok = len(content.split()), len(answer.split())
            with state.lock:
                state.requests += 1
                state.prompt_tokens += p_tok
                state.completion_tokens += c_tok
            out = json.dumps(
                {
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def review_records(
    seed: int = 0, n_users: int = 9, n_items: int = 5
) -> tuple[list[dict], list[dict]]:
    """(reviews, meta) records in Google Local's schema; every 3rd review has a photo."""
    rng = np.random.default_rng(seed)
    meta = [
        {
            "gmap_id": f"0xg:{i}",
            "name": f"Place {i}",
            "category": [f"{CUISINES[i]} restaurant", "Restaurant"] if i != 4 else None,
            "price": ["$", "$$", "$$$", None, "$$$$"][i],
        }
        for i in range(n_items)
    ]
    reviews = []
    k = 0
    for u in range(n_users):
        for i in sorted(rng.choice(n_items, int(rng.integers(3, n_items + 1)), replace=False)):
            words = [CUISINES[i], str(rng.choice(CUISINES)), str(rng.choice(CHEAP + PRICEY))]
            text = (
                f"The {words[0]} and {words[1]} were {words[2]}. {rng.choice(FILLER).capitalize()}."
            )
            reviews.append(
                {
                    "user_id": f"1{u:02d}",
                    "gmap_id": f"0xg:{i}",
                    "time": 1_600_000_000_000 + 86_400_000 * k,
                    "rating": int(rng.integers(1, 6)),
                    "text": text,
                    # item 4's reviews have no photos: it must get a mask, not a vector
                    "pics": [{"url": [f"https://lh5.example/p/img{k}.png"]}]
                    if k % 3 == 0 and i != 4
                    else None,
                }
            )
            k += 1
    return reviews, meta


def write_source(folder: Path, reviews: list[dict], meta: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reviews.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (folder / "meta.json").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return folder


def image_names(reviews: list[dict]) -> list[str]:
    return [Path(r["pics"][0]["url"][0]).name for r in reviews if r["pics"]]
