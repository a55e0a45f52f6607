"""The Redis layout of the similarity tables and the one way to connect to it.

Keys (P = `redis_prefix`, V = a version, KIND = item_item | user_user):

    P:current              string: the version readers use
    P:versions             sorted set: version -> unix time it became current
    P:V:_meta              hash: kinds, pair counts, source, complete=1 once every key is written
    P:V:KIND:ANCHOR        sorted set: neighbour id -> score, one per anchor
    P:V:item_titles        hash: item id -> title (when the items table has titles)

Ids are the source's (MovieLens "1", a Yelp business_id), never dense indexes.

A version is a content hash of the exported tables, so re-exporting the same tables
writes to the same keys.  Readers resolve `P:current` first and then read one sorted
set; the exporter moves `current` only after every key of the new version exists, and
gives the old version's keys a TTL of `redis_grace_s` so a reader that resolved the old
version just before the switch still finds its complete list.

The password comes only from the environment variable REDIS_PASSWORD, never from the
URL or argv.  `rediss://` URLs use TLS (redis-py's `ssl_*` query parameters, e.g.
`?ssl_ca_certs=/etc/ssl/ca.pem`, configure it).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import redis

from dlrrec.config import ConfigError, DlrrecError

KIND_NAMES = {"item": "item_item", "user": "user_user"}


class RedisUnavailable(DlrrecError):
    """Redis cannot be reached or refused our credentials."""


def key_current(prefix: str) -> str:
    return f"{prefix}:current"


def key_versions(prefix: str) -> str:
    return f"{prefix}:versions"


def key_meta(prefix: str, version: str) -> str:
    return f"{prefix}:{version}:_meta"


def key_anchor(prefix: str, version: str, kind: str, anchor: str) -> str:
    return f"{prefix}:{version}:{kind}:{anchor}"


def key_titles(prefix: str, version: str) -> str:
    return f"{prefix}:{version}:item_titles"


def text(value: Any) -> str:
    """A reply value (bytes with decode_responses=False) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def safe_url(url: str) -> str:
    """The URL without any credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A checked client for `url` (PING answered), password from $REDIS_PASSWORD.

    Raises:
        ConfigError: empty URL, a password inside the URL, or an unknown scheme.
        RedisUnavailable: unreachable server, TLS failure or wrong/missing password.
    """
    if not url:
        raise ConfigError("similarity.redis_url: required (e.g. redis://localhost:6379/0)")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"similarity.redis_url {safe_url(url)!r}: expected redis://, rediss:// or unix://"
        )
    if parts.password:
        raise ConfigError(
            "similarity.redis_url: must not contain a password; set REDIS_PASSWORD instead"
        )
    password = os.environ.get("REDIS_PASSWORD") or None
    try:
        client = redis.Redis.from_url(
            url,
            password=password,
            socket_connect_timeout=timeout_s,
            socket_timeout=max(timeout_s, 30.0),
            decode_responses=False,
        )
        client.ping()
    except redis.AuthenticationError:
        raise RedisUnavailable(
            f"redis {safe_url(url)}: authentication failed; check REDIS_PASSWORD"
        ) from None
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
            raise RedisUnavailable(
                f"redis {safe_url(url)}: authentication required or wrong; set REDIS_PASSWORD"
            ) from None
        raise RedisUnavailable(f"redis {safe_url(url)}: {str(e).splitlines()[0]}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RedisUnavailable(f"redis {safe_url(url)}: cannot connect ({reason})") from None
    return client
