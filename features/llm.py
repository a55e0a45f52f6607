"""LLM extraction of the paper's text features (dlrrec paper, section 4.3).

Three prompts per entity (a user or a business), each over that entity's reviews:

    summary   a short summary of the reviews (embedded later by features/text.py)
    price     "overpriced" | "fair" | "cheap" | "none"
    types     up to 11 restaurant types, e.g. ["pizza", "italian"]

Two providers answer them behind one interface (`Provider.extract`):

    ChatCompletionsProvider   any OpenAI-compatible `POST {base_url}/chat/completions`
                              endpoint, with an on-disk answer cache, bounded
                              concurrency, retries with backoff on 429/5xx/timeouts,
                              and token/cost accounting (`Usage.to_meta()` for _meta.json)
    OfflineProvider           no network: an extractive summary, and price and types
                              from the source's metadata when it has them

Leakage: the caller chooses which reviews go into an entity's prompt.  For a training
row the reviews must exclude the row's own (out-of-fold), see DESIGN.md "Leakage rules".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from dlrrec.config import ConfigError, DlrrecError

PromptKind = Literal["summary", "price", "types"]
PRICE_CATEGORIES = ("overpriced", "fair", "cheap", "none")
MAX_TYPES = 11  # the paper pads the type list to 11 (here: KJT lengths, no pad id)

# The paper's wording for price and types (section 4.3); the summary prompt follows
# tian2024mmrec's Fig. 2.  Changing a prompt changes every cache key, as it should.
PROMPTS: dict[PromptKind, str] = {
    "summary": (
        "Summarize the following reviews {about} in two or three sentences. "
        "Keep the concrete likes and dislikes."
    ),
    "price": (
        "Can you tell me if the price is overpriced, fair price, low price from reviews "
        "for this restaurant? Give me just the category."
    ),
    "types": (
        "Can you tell me what kind of restaurant this is from these reviews for the "
        "restaurant? Return me in this format: 'type'."
    ),
}
ABOUT = {"user": "written by one user", "item": "received by one business"}


class LLMError(DlrrecError):
    """The endpoint kept failing after every retry (one line: URL, status, attempts)."""


@dataclass(frozen=True)
class EntityReviews:
    """One entity's prompt input.

    Args:
        entity: its id (for messages only; not part of the cache key).
        kind: "user" or "item".
        texts: the review texts to read, already leakage-filtered by the caller.
        price_tier: 1..4 ($..$$$$) from the source's metadata, for the offline price.
        categories: the source's categories, for the offline types.
    """

    entity: str
    kind: Literal["user", "item"]
    texts: tuple[str, ...]
    price_tier: int | None = None
    categories: tuple[str, ...] = ()


@dataclass
class Extraction:
    summary: str
    price: str
    types: list[str]


@dataclass
class Usage:
    """Request and token accounting, summed over a run (thread-safe via `add`)."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_meta(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")
        }
        d["cost_usd"] = round(self.cost_usd, 6)
        return d


# ---- answer parsing (pure) -------------------------------------------------------

_PRICE_WORDS = (
    (
        "overpriced",
        ("overpriced", "over-priced", "over priced", "too expensive", "expensive", "pricey"),
    ),
    ("cheap", ("low price", "low-price", "cheap", "inexpensive", "affordable", "budget")),
    ("fair", ("fair", "reasonable", "moderate", "average")),
)


def parse_price(answer: str) -> str:
    """A free-text answer -> one of PRICE_CATEGORIES; anything unclear is "none".

    The first category word in the answer wins ("Fair price, not overpriced" is fair).
    """
    text = answer.lower()
    best: tuple[int, str] | None = None
    for category, words in _PRICE_WORDS:
        for w in words:
            at = text.find(w)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, category)
    return best[1] if best else "none"


_ITEM_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
_TYPE_FILLER = re.compile(r"^(?:type|types|restaurant type|category)\s*:\s*", re.IGNORECASE)


_NOT_TYPES = ("restaurant", "restaurants", "food", "none", "n/a", "unknown")


def parse_types(answer: str, max_types: int = MAX_TYPES) -> list[str]:
    """`"'Pizza', 'Italian'"`, a bulleted or numbered list, or "Type: X" -> ["pizza", "italian"].

    Lower-cased, stripped of quotes, list marks and a trailing " restaurant", in
    answer order without repeats, at most `max_types`.
    """
    out: list[str] = []
    for line in answer.splitlines():
        line = _TYPE_FILLER.sub("", _ITEM_MARK.sub("", line))
        for part in re.split(r"[,;|]", line):
            t = part.strip().strip("'\"`.[]() ").lower()
            t = re.sub(r"\s+restaurants?$", "", t).strip()
            if t and len(t) <= 40 and t not in out and t not in _NOT_TYPES:
                out.append(t)
    return out[:max_types]


def parse_summary(answer: str) -> str:
    return " ".join(answer.split())


def _sentences(texts: Sequence[str]) -> list[str]:
    out = []
    for t in texts:
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", t) if len(s.strip()) > 3]
    return out


def extractive_summary(texts: Sequence[str], max_sentences: int = 3) -> str:
    """The sentences whose words are most frequent across all the texts, in text order.

    A frequency-based extractive summary (Luhn 1958): no model, deterministic.
    """
    sents = _sentences(texts)
    if not sents:
        return ""
    words = [re.findall(r"[a-z']{3,}", s.lower()) for s in sents]
    freq = Counter(w for ws in words for w in set(ws))
    score = [sum(freq[w] for w in ws) / (len(ws) or 1) for ws in words]
    keep = sorted(sorted(range(len(sents)), key=lambda i: (-score[i], i))[:max_sentences])
    return " ".join(sents[i] for i in keep)


def tier_price(tier: int | None) -> str:
    """Metadata $-tier -> a price category: $ cheap, $$ fair, $$$+ overpriced, else none.

    A proxy: "$$$$" says expensive, which the reviews may or may not call overpriced.
    """
    if tier is None:
        return "none"
    return "cheap" if tier <= 1 else "fair" if tier == 2 else "overpriced"


# ---- providers ---------------------------------------------------------------------


ALL_KINDS: tuple[PromptKind, ...] = ("summary", "price", "types")


class Provider(Protocol):
    name: str
    usage: Usage

    def extract(
        self, entities: Sequence[EntityReviews], kinds: Sequence[PromptKind] = ALL_KINDS
    ) -> list[Extraction]: ...


class OfflineProvider:
    """No endpoint: extractive summary; price and types from metadata (else none/[])."""

    name = "offline"

    def __init__(self) -> None:
        self.usage = Usage()

    def extract(
        self, entities: Sequence[EntityReviews], kinds: Sequence[PromptKind] = ALL_KINDS
    ) -> list[Extraction]:
        return [
            Extraction(
                summary=extractive_summary(e.texts) if "summary" in kinds else "",
                price=tier_price(e.price_tier) if "price" in kinds else "none",
                types=parse_types("\n".join(e.categories)) if "types" in kinds else [],
            )
            for e in entities
        ]


def prompt_input(texts: Sequence[str], max_chars: int) -> str:
    """The reviews as a bulleted list, cut at `max_chars` on a review boundary."""
    out: list[str] = []
    n = 0
    for t in texts:
        line = "- " + " ".join(t.split())
        if out and n + len(line) > max_chars:
            break
        out.append(line[:max_chars])
        n += len(line) + 1
    return "\n".join(out)


def cache_key(model: str, prompt: str, text: str) -> str:
    return hashlib.sha256("\0".join((model, prompt, text)).encode()).hexdigest()


class ChatCompletionsProvider:
    """An OpenAI-compatible chat-completions client for the three prompts.

    Args:
        base_url: e.g. "https://api.openai.com/v1" or a local vLLM "http://127.0.0.1:8000/v1".
        model: the model name sent in each request (and part of every cache key).
        cache_dir: answers are stored as `<sha256(model, prompt, input)>.json`; "" = no cache.
        api_key: sent as a Bearer token when set (read it from the environment, never argv).
        max_concurrency: requests in flight at once.
        timeout_s, max_retries, backoff_s: per attempt; retry 429, 5xx, timeouts,
            connection errors and malformed responses, sleeping backoff_s * 2**attempt
            (or the server's Retry-After, capped at 60 s).
        price_per_mtok: (input, output) USD per million tokens, for `usage.cost_usd`.
        max_input_chars: reviews beyond this are left out of a prompt.
    """

    name = "chat_completions"

    def __init__(
        self,
        base_url: str,
        model: str,
        cache_dir: str = "",
        api_key: str = "",
        max_concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        price_per_mtok: tuple[float, float] = (0.0, 0.0),
        max_input_chars: int = 12000,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError("llm.max_concurrency: must be >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.cache = Path(cache_dir) if cache_dir else None
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.price_per_mtok = price_per_mtok
        self.max_input_chars = max_input_chars
        self.usage = Usage()

    def extract(
        self, entities: Sequence[EntityReviews], kinds: Sequence[PromptKind] = ALL_KINDS
    ) -> list[Extraction]:
        """The `kinds` prompts for each entity (the others answer "", "none", [])."""
        jobs = [(e, k) for e in entities for k in kinds]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            answers = list(pool.map(lambda job: self._answer(*job), jobs))
        out = []
        for i, e in enumerate(entities):
            got = dict(zip(kinds, answers[len(kinds) * i : len(kinds) * (i + 1)]))
            summary = (
                parse_summary(got["summary"]) or extractive_summary(e.texts)
                if "summary" in got
                else ""
            )
            out.append(
                Extraction(
                    summary=summary,
                    price=parse_price(got.get("price", "")),
                    types=parse_types(got.get("types", "")),
                )
            )
        return out

    def _answer(self, entity: EntityReviews, kind: PromptKind) -> str:
        if not entity.texts:
            return ""  # nothing to read: no request (summary falls back to "")
        prompt = PROMPTS[kind].format(about=ABOUT[entity.kind])
        text = prompt_input(entity.texts, self.max_input_chars)
        key = cache_key(self.model, prompt, text)
        path = self.cache / f"{key}.json" if self.cache else None
        if path is not None and path.is_file():
            self.usage.add(cache_hits=1)
            return str(json.loads(path.read_text())["answer"])
        answer = self.complete(prompt, text)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"model": self.model, "answer": answer}))
            tmp.replace(path)  # atomic: a concurrent reader never sees half a file
        return answer

    def complete(self, prompt: str, text: str) -> str:
        """One chat completion (prompt, then the reviews); retried; returns the content."""
        body = json.dumps(
            {
                "model": self.model,
                "temperature": 0,
                "messages": [{"role": "user", "content": f"{prompt}\n\nReviews:\n{text}"}],
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
            self.usage.add(requests=1)
            wait = self.backoff_s * 2**attempt
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = json.loads(resp.read())
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("content is not a string")
                tokens = payload.get("usage") or {}
                p_tok = int(tokens.get("prompt_tokens", 0))
                c_tok = int(tokens.get("completion_tokens", 0))
                cost = (p_tok * self.price_per_mtok[0] + c_tok * self.price_per_mtok[1]) / 1e6
                self.usage.add(prompt_tokens=p_tok, completion_tokens=c_tok, cost_usd=cost)
                return content
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    raise LLMError(
                        f"{self.url}: {last} (not retried: fix the request or the key)"
                    ) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 60.0)
            except TimeoutError:
                last = f"no answer within timeout_s={self.timeout_s:g}"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    last = f"no answer within timeout_s={self.timeout_s:g}"
                else:
                    last = f"connection failed ({e.reason})"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"malformed response ({type(e).__name__})"
            if attempt < self.max_retries:
                time.sleep(wait)
        raise LLMError(f"{self.url}: {last} after {self.max_retries + 1} attempts")


@dataclass
class LLMConfig:
    """The `features.llm` section: review summaries, price and types (features/summaries.py).

    Args:
        base_url: OpenAI-compatible endpoint; "" = the offline provider.
        model: model name (paper: gpt-3.5-turbo-1106).
        api_key_env: environment variable holding the key (never in a config file).
        cache_dir: answer cache folder.
        max_concurrency: requests in flight at once.
        timeout_s: seconds per request attempt.
        max_retries: retries of a 429, 5xx, timeout or malformed answer (backoff 1 s,
            doubling, or the server's Retry-After).
        price_per_mtok: [input, output] USD per million tokens.
        folds: K of the out-of-fold summaries (features/summaries.py): a training row in
            fold k reads summaries of the other folds' reviews only.
    """

    base_url: str = ""
    model: str = "gpt-3.5-turbo-1106"
    api_key_env: str = "OPENAI_API_KEY"
    cache_dir: str = "cache/llm"
    max_concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5
    price_per_mtok: list[float] | None = None
    folds: int = 5

    def validate(self) -> None:
        if self.folds < 2:
            raise ConfigError("features.llm.folds: must be >= 2 (out-of-fold summaries)")


def build_provider(cfg: LLMConfig) -> Provider:
    if not cfg.base_url:
        return OfflineProvider()
    price = cfg.price_per_mtok or [0.0, 0.0]
    if len(price) != 2:
        raise ConfigError(f"llm.price_per_mtok: expected [input, output], got {price}")
    return ChatCompletionsProvider(
        base_url=cfg.base_url,
        model=cfg.model,
        cache_dir=cfg.cache_dir,
        api_key=os.environ.get(cfg.api_key_env, ""),
        max_concurrency=cfg.max_concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        price_per_mtok=(price[0], price[1]),
    )
