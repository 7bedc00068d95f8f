"""Deterministic generator of doodle-like frames, with ground truth.

One frame is one JSON object on one line (UTF-8, ~2 KB), imitating the "doodle"
data-engineering challenge stream::

    {"event":"view","ctx":{"ts":1468239107,"uid":"9c1e..."},"uid":"3fa0c2e91b07d4a58e6",
     "page":"https:\\/\\/doodle.com\\/poll\\/x","ts":1468244384,"meta":{...},"page":"..."}

* ``uid``: 19 lowercase hex chars, drawn uniformly from a pool of ``users`` ids
  (the pool depends on the seed and ``users`` only).
* ``ts``: unix seconds. The clock starts at ``start_ts`` and advances by one second
  with probability ``1/rate`` per frame (``rate`` ~ frames per second; for
  ``rate < 1`` it advances ``int(1/rate)`` seconds plus one with the fractional
  probability). ``string_ts_frac`` of the frames carry it as a numeric string.
* Root ``uid``/``ts`` come in either order after 0-3 leading noise keys; noise keys
  also sit between and after them and may repeat at the root (duplicate keys). In a
  valid frame the root ``uid`` and ``ts`` occur exactly once each.
* Noise values nest objects/arrays up to 3-4 levels and reuse the names ``uid`` and
  ``ts`` there (decoys with other values, also *before* the root ones); string values
  may even contain escaped JSON text such as ``{\\"uid\\":\\"...\\",\\"ts\\":...}``.
  Root keys like ``ts_ms``/``uidx``/``user_uid`` are decoys for prefix matchers.
* Strings use every JSON escape (``\\" \\\\ \\n \\t \\b \\f \\r \\/ \\uXXXX``,
  surrogate pairs) and raw UTF-8 Cyrillic; numbers are ints, negatives, floats and
  exponents; ``true``/``false``/``null`` occur. No raw control character (so no raw
  newline) ever occurs inside a line.

Defects (fractions of frames; the three content fractions are exclusive buckets
whose sum must be <= 1, the delay is independent of them):

* ``malformed_frac``: replaced by invalid frames, spread evenly over the parse
  reasons of :mod:`doodlestats.batch.reasons`, each built so that exactly one reason
  applies (precedence malformed_json > missing_ts > bad_ts > missing_uid > bad_uid):
  ``malformed_json`` (truncated line, non-JSON text, trailing comma / missing comma,
  array / number / string at the root), ``missing_ts`` / ``missing_uid`` (valid
  object without that root key; nested decoys of it are always present), ``bad_ts``
  (root ts ``"12x"``, ``""``, ``1.5``, ``true``, ``false``, ``null``, ``-5``,
  ``"-5"``, ``"abc"``, ``{"a":1}``, ``[ts]``), ``bad_uid`` (root uid ``""``, a number
  or ``null``). Note: ``"ts":null`` is ``bad_ts``, ``"uid":null`` is ``bad_uid``.
* ``bitflip_frac``: a valid-looking frame (int ts) whose root ts has one bit flipped,
  the bit uniform in ``bitflip_min_bit..bitflip_max_bit`` (reason ``ts_outlier``;
  not valid for the truth).
* ``string_ts_frac``: ts as a numeric string; these frames are VALID.
* ``delay_prob``/``max_delay``: any frame (whatever its content) is, with
  probability ``delay_prob``, delivered as if it arrived at ``ts + d``,
  ``d`` uniform in ``1..max_delay`` (on-time frames arrive at ``ts``; ``ts`` is the
  generator's clock, i.e. the un-flipped ts). Output order is the stable sort by
  arrival time.

Ground truth (plain Python, computed while generating) counts only valid frames::

    {"params": {...GenConfig...}, "frames": n, "valid_frames": n,
     "defects": {"malformed_json": n, "missing_uid": n, "missing_ts": n, "bad_ts": n,
                 "bad_uid": n, "ts_outlier": n, "string_ts": n, "delayed": n},
     "minutes": [{"minute": epoch_s, "unique_users": n, "frames": n}, ...],
     "unique_users_total": n, "ts_min": n|null, "ts_max": n|null,
     "max_delay_used": n, "bytes": total line bytes without newlines}

Usage::

    python -m tools.generator --count 1000000 --rate 1000 --users 100000 \\
        --seed 1 --out data/stream.jsonl.gz --truth data/stream.truth.json

Everything is derived from ``random.Random`` instances seeded from ``seed`` (no
global random state, no ``hash()``), so the same config yields identical bytes
(``.gz`` output too: the gzip header carries no name and mtime 0).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Iterator

from doodlestats.batch import reasons as R

BATCH = 8192  # frames per yielded batch / written chunk (~16 MB of text)
_POOL = 1024  # variants per fragment pool (indices are 10-bit)


@dataclass(frozen=True)
class GenConfig:
    """All generator options; see the module docstring for their meaning."""

    count: int = 1000
    rate: float = 1000.0
    users: int = 100_000
    seed: int = 1
    start_ts: int = 1468244384
    max_delay: int = 0
    delay_prob: float = 0.0
    string_ts_frac: float = 0.0
    malformed_frac: float = 0.0
    bitflip_frac: float = 0.0
    bitflip_min_bit: int = 20
    bitflip_max_bit: int = 30


def validate(cfg: GenConfig) -> None:
    """Raise ``ValueError`` with a clear message if ``cfg`` is unusable."""

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("count", "users", "seed", "start_ts", "max_delay",
                 "bitflip_min_bit", "bitflip_max_bit"):
        if not is_int(getattr(cfg, name)):
            raise ValueError(f"{name} must be an integer (got {getattr(cfg, name)!r})")
    if cfg.count < 0:
        raise ValueError(f"count must be >= 0 (got {cfg.count})")
    if (not isinstance(cfg.rate, (int, float)) or isinstance(cfg.rate, bool)
            or not 0 < cfg.rate < float("inf")):
        raise ValueError(f"rate must be a finite number > 0 (got {cfg.rate})")
    if cfg.users < 1:
        raise ValueError(f"users must be >= 1 (got {cfg.users})")
    if not 0 <= cfg.start_ts <= 2**31 - 1:
        raise ValueError(f"start_ts must be in 0..{2**31 - 1} (got {cfg.start_ts})")
    if cfg.max_delay < 0:
        raise ValueError(f"max_delay must be >= 0 (got {cfg.max_delay})")
    for name in ("delay_prob", "string_ts_frac", "malformed_frac", "bitflip_frac"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1] (got {v!r})")
    total = cfg.string_ts_frac + cfg.malformed_frac + cfg.bitflip_frac
    if total > 1.0 + 1e-12:
        raise ValueError(
            "string_ts_frac + malformed_frac + bitflip_frac must be <= 1 "
            f"(got {total:g})")
    # bit <= 36 keeps a flipped ts (< 2**31 + 2**36) within the schema's maximum
    if not 0 <= cfg.bitflip_min_bit <= cfg.bitflip_max_bit <= 36:
        raise ValueError(
            "need 0 <= bitflip_min_bit <= bitflip_max_bit <= 36 "
            f"(got {cfg.bitflip_min_bit}..{cfg.bitflip_max_bit})")


# --------------------------------------------------------------------------- pools
# Bodies of JSON strings, already escaped (raw JSON text between the quotes).
_WORDS = (
    "doodle", "poll", "meeting", "lunch", "vote", "option", "yes", "no", "maybe",
    "friday", "team", "offsite", "calendar", "slot", "invite", "reminder", "guest",
    "organizer", "comment", "free", "busy", "tentative", "zurich", "berlin", "room",
    "встреча", "опрос", "пятница", "обед", "голосование", "да", "нет", "может быть",
    "команда", "Цюрих", "приглашение", "календарь",
)
_SNIPPETS = (
    r"\"quoted\"", r"say \"hi\"", r"C:\\Users\\doodle\\poll.txt", r"a\\b",
    r"line1\nline2", r"col1\tcol2\tcol3", r"bell\b", r"form\ffeed",
    r"carriage\rreturn\r\n", r"https:\/\/doodle.com\/poll\/", r"<\/script>",
    r"caf\u00e9", r"\u041f\u0440\u0438\u0432\u0435\u0442", r"\u00fcber", r"na\u00efve",
    r"\ud83d\ude00", r"\u2028sep\u2029", r"\u001f", r"tab\t\"mix\"\\end",
    "Привет, мир", "Съешь же ещё этих мягких французских булок, да выпей чаю",
    "Доброе утро", "ёжик в тумане", "Ünïcödé ✓ €", "日本語",
)
# Root noise keys, as raw JSON text; none decodes to "uid" or "ts".
_ROOT_KEYS = (
    "event", "page", "url", "referrer", "ua", "ip", "session", "meta", "props", "ctx",
    "geo", "tags", "items", "screen", "lang", "title", "ab", "flags", "score",
    "duration", "payload", "client", "device", "campaign", "options", "votes",
    "comment", "заголовок", "описание", r"we\"ird", r"tab\tkey", r"sl\/ash",
    "uid_hash", "user_uid", "uidx", "ts_ms", "tsz", "_ts", "timestamp", "uid2",
)
_NESTED_KEYS = (
    "id", "name", "value", "type", "x", "y", "list", "data", "info", "inner", "deep",
    "extra", "n", "k", "v", "label", "когда", "кто", "Uid", "TS", "uid ", "tss",
    "created", "updated", "owner", "count",
)
_NON_JSON = (
    "hello world", "GET /favicon.ico HTTP/1.1", "<html><body>502 Bad Gateway</body></html>",
    "uid=3fa0c2e91b07d4a58e6 ts=1468244384", "}{", "{", "]", "{{}}", "undefined",
    "{uid:\"3fa0c2e91b07d4a58e6\",ts:1468244384}", "ts,uid",
    "Ошибка: соединение разорвано", "\\x00\\x01 binary?", "{\"uid\" \"x\"}",
    "{\"uid\":\"3fa0c2e91b07d4a58e6\",\"ts\":1468244384", "[1,2", "tru", "nul",
)
_BAD_TS = ('"12x"', '""', "1.5", "true", "false", "null", "-5", '"-5"', '"abc"',
           '{"a":1}', "[1468244384]")
_BAD_UID = ('""', "0", "12345", "-1", "1.5e3", "null")
_KEY_SEPS = (":", ":", ":", ": ", " : ")


class _Pools:
    """Pre-serialised fragments for one config (seed, users, start_ts)."""

    def __init__(self, cfg: GenConfig) -> None:
        self.start_ts = cfg.start_ts
        self.rng = rng = random.Random(f"doodlestats-pool-{cfg.seed}")
        urng = random.Random(f"doodlestats-users-{cfg.seed}")
        seen: set[int] = set()
        users: list[str] = []
        while len(users) < cfg.users:
            v = urng.getrandbits(76)
            if v not in seen:
                seen.add(v)
                users.append('"%019x"' % v)
        self.users = users
        self.lead = [self._items(rng.randint(0, 3), small=True)
                     for _ in range(_POOL)]
        self.mid = [self._items(rng.randint(0, 3), small=True) for _ in range(_POOL)]
        self.tail: list[str] = []
        self.rich: list[str] = []  # tails with nested "uid" AND "ts" decoys
        for _ in range(_POOL):
            t, rich = self._tail()
            self.tail.append(t)
            if rich:
                self.rich.append(t)
        if not self.rich:  # (practically impossible) keep the guarantee anyway
            self.rich.append(',"meta":{"uid":%s,"ts":%s}'
                             % (self._decoy_uid(), self._decoy_ts()))
        while len(self.rich) < _POOL:  # pad to 1024 so it can be indexed by 10 bits
            self.rich.extend(self.rich[: _POOL - len(self.rich)])

    # -- scalars
    def _str(self, max_parts: int = 4) -> str:
        rng = self.rng
        parts = []
        for _ in range(rng.randint(1, max_parts)):
            r = rng.random()
            if r < 0.55:
                parts.append(rng.choice(_WORDS))
            elif r < 0.9:
                parts.append(rng.choice(_SNIPPETS))
            elif r < 0.95:
                parts.append("%x" % rng.getrandbits(48))
            else:  # escaped JSON text inside a string: a regex/substring trap
                parts.append(r'{\"uid\":\"%019x\",\"ts\":%d}'
                             % (rng.getrandbits(76), self._decoy_ts_int()))
        return '"' + rng.choice((" ", "", " ", "-")).join(parts) + '"'

    def _decoy_ts_int(self) -> int:
        return max(0, self.start_ts + self.rng.randint(-5_000_000, 5_000_000))

    def _decoy_uid(self) -> str:
        r = self.rng.random()
        if r < 0.8:
            return '"%019x"' % self.rng.getrandbits(76)
        if r < 0.9:
            return '"%019X"' % self.rng.getrandbits(76)
        return self.rng.choice(('"anonymous"', "42", "null", '""'))

    def _decoy_ts(self) -> str:
        r = self.rng.random()
        t = self._decoy_ts_int()
        if r < 0.7:
            return str(t)
        if r < 0.85:
            return '"%d"' % t
        if r < 0.95:
            return "%d.%03d" % (t, self.rng.randint(0, 999))
        return self.rng.choice(("null", '"yesterday"', "-1"))

    def _scalar(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            return str(rng.randint(0, 10**6))
        if r < 0.22:
            return str(-rng.randint(1, 10**9))
        if r < 0.32:
            return repr(round(rng.uniform(-1e4, 1e4), rng.randint(1, 6)))
        if r < 0.38:
            return "%s%d.%de%s%d" % (rng.choice(("", "-")), rng.randint(1, 9),
                                     rng.randint(0, 999), rng.choice(("", "+", "-")),
                                     rng.randint(1, 30))
        if r < 0.40:
            return "%dE%d" % (rng.randint(1, 9), rng.randint(1, 9))
        if r < 0.44:
            return "true"
        if r < 0.47:
            return "false"
        if r < 0.51:
            return "null"
        return self._str()

    # -- containers
    def _obj(self, depth: int, decoy_p: float) -> tuple[str, bool]:
        """A JSON object; returns (text, contains nested uid and ts decoys)."""
        rng = self.rng
        items = []
        rich_u = rich_t = False
        if rng.random() < decoy_p:
            items.append('"uid":' + self._decoy_uid())
            rich_u = True
        if rng.random() < decoy_p:
            items.append('"ts":' + self._decoy_ts())
            rich_t = True
        for _ in range(rng.randint(0 if items else 1, 4)):
            v, r = self._value(depth + 1, decoy_p)
            rich_u = rich_u or r
            rich_t = rich_t or r
            items.append('"%s":%s' % (rng.choice(_NESTED_KEYS), v))
        rng.shuffle(items)
        if rng.random() < 0.1:
            return "{ " + " , ".join(items) + " }", rich_u and rich_t
        return "{" + ",".join(items) + "}", rich_u and rich_t

    def _arr(self, depth: int, decoy_p: float) -> tuple[str, bool]:
        rng = self.rng
        vals = []
        rich = False
        for _ in range(rng.randint(0, 4)):
            if depth < 4 and rng.random() < 0.5:
                v, r = self._obj(depth + 1, decoy_p)
            else:
                v, r = self._value(depth + 1, decoy_p)
            vals.append(v)
            rich = rich or r
        return "[" + rng.choice((",", ",", ", ")).join(vals) + "]", rich

    def _value(self, depth: int, decoy_p: float) -> tuple[str, bool]:
        rng = self.rng
        if depth < 4 and rng.random() < 0.45 / depth:
            return (self._obj if rng.random() < 0.6 else self._arr)(depth, decoy_p)
        return self._scalar(), False

    def _root_item(self, small: bool) -> tuple[str, str, bool]:
        """(key, ``"key":value`` text, has nested decoys); key is never uid/ts."""
        rng = self.rng
        key = rng.choice(_ROOT_KEYS)
        if key == "ts_ms":
            v = str(self._decoy_ts_int() * 1000 + rng.randint(0, 999))
        elif key in ("tsz", "_ts"):
            v = self._decoy_ts()
        elif key in ("uidx", "user_uid", "uid2"):
            v = self._decoy_uid()
        elif key == "timestamp":
            v = '"2016-07-%02dT%02d:%02d:%02dZ"' % (rng.randint(1, 31), rng.randint(0, 23),
                                                  rng.randint(0, 59), rng.randint(0, 59))
        elif small:
            if rng.random() < 0.3:
                v, _ = self._obj(2, 0.7)
            else:
                v = self._scalar()
        else:
            r = rng.random()
            if r < 0.45:
                v, rich = self._obj(2, 0.35)
                return key, '"%s"%s%s' % (key, rng.choice(_KEY_SEPS), v), rich
            if r < 0.7:
                v, rich = self._arr(2, 0.35)
                return key, '"%s"%s%s' % (key, rng.choice(_KEY_SEPS), v), rich
            v = self._str(14)
        return key, '"%s"%s%s' % (key, rng.choice(_KEY_SEPS), v), False

    def _items(self, n: int, small: bool) -> str:
        """``n`` root items, each followed by a comma (lead/mid fragments)."""
        out = []
        for _ in range(n):
            _, it, _ = self._root_item(small)
            out.append(it + self.rng.choice((",", ",", ",", ", ")))
        return "".join(out)

    def _tail(self) -> tuple[str, bool]:
        """Root items after the second of uid/ts; each starts with a comma."""
        rng = self.rng
        if rng.random() < 0.02:
            return "", False
        target = rng.randint(600, 2500)
        out: list[str] = []
        keys: list[str] = []
        size = 0
        rich = False
        if rng.random() < 0.5:  # a guaranteed deep decoy block
            v = ('{"uid":%s,"ts":%s,"inner":{"ts":%s,"deep":[{"uid":%s,"ts":%s}]}}'
                 % (self._decoy_uid(), self._decoy_ts(), self._decoy_ts(),
                    self._decoy_uid(), self._decoy_ts()))
            out.append(',"%s":%s' % (rng.choice(("meta", "ctx", "props")), v))
            rich = True
        while size < target:
            key, it, r = self._root_item(small=False)
            rich = rich or r
            if keys and rng.random() < 0.08:  # duplicate an earlier root key
                key = rng.choice(keys)
                it = '"%s":%s' % (key, self._scalar())
            keys.append(key)
            out.append(rng.choice((",", ",", ",", ", ")) + it)
            size += len(it)
        return "".join(out), rich


# --------------------------------------------------------------------------- core
class _Truth:
    """Ground-truth accumulator (valid frames are fed in generation order)."""

    def __init__(self, cfg: GenConfig) -> None:
        self.cfg = cfg
        self.defects = {R.MALFORMED_JSON: 0, R.MISSING_UID: 0, R.MISSING_TS: 0,
                        R.BAD_TS: 0, R.BAD_UID: 0, R.TS_OUTLIER: 0,
                        "string_ts": 0, "delayed": 0}
        self.minutes: dict[int, tuple[set[int], int]] = {}
        self.max_delay_used = 0
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.frames = 0
        self.bytes = 0

    def result(self) -> dict:
        mins = sorted(self.minutes.items())
        users: set[int] = set()
        for _, (s, _) in mins:
            users |= s
        return {
            "params": asdict(self.cfg),
            "frames": self.frames,
            "valid_frames": sum(n for _, (_, n) in mins),
            "defects": dict(self.defects),
            "minutes": [{"minute": m, "unique_users": len(s), "frames": n}
                        for m, (s, n) in mins],
            "unique_users_total": len(users),
            "ts_min": self.ts_min,
            "ts_max": self.ts_max,
            "max_delay_used": self.max_delay_used,
            "bytes": self.bytes,
        }


def _batches(cfg: GenConfig, truth: _Truth) -> Iterator[tuple[list[str], int]]:
    """Yield (lines in arrival order, frames generated so far) batches."""
    validate(cfg)
    pools = _Pools(cfg)
    rng = random.Random(f"doodlestats-frames-{cfg.seed}")
    rnd = rng.random
    bits = rng.getrandbits
    users = pools.users
    n_users = len(users)
    LEAD, MID, TAIL, RICH = pools.lead, pools.mid, pools.tail, pools.rich
    UK = tuple('"uid"' + s for s in _KEY_SEPS[1:])  # 4 variants, 2 bits
    TK = tuple('"ts"' + s for s in _KEY_SEPS[1:])
    fmt = "{%s%s,%s%s%s}"

    step = 1.0 / cfg.rate
    adv_int = int(step)
    adv_frac = step - adv_int
    c_mal = cfg.malformed_frac
    c_flip = c_mal + cfg.bitflip_frac
    c_str = c_flip + cfg.string_ts_frac
    p_delay = cfg.delay_prob if cfg.max_delay > 0 else 0.0
    max_delay = cfg.max_delay
    flip_lo = cfg.bitflip_min_bit
    flip_span = cfg.bitflip_max_bit - cfg.bitflip_min_bit + 1

    defects = truth.defects
    n_str = n_flip = n_delayed = 0
    max_d = 0
    heap: list[tuple[int, int, str]] = []
    push, pop = heapq.heappush, heapq.heappop

    ts = cfg.start_ts
    tsv = str(ts)
    tsq = '"' + tsv + '"'
    minute = ts - ts % 60
    cur_set: set[int] = set()
    cur_n = 0
    first_valid: int | None = None
    last_valid: int | None = None
    out: list[str] = []

    for i in range(cfg.count):
        r = rnd()
        b = bits(36)
        u = int(rnd() * n_users)
        if r >= c_str:  # plain valid frame (the common path)
            if b >> 35:
                line = fmt % (LEAD[b & 1023], UK[(b >> 30) & 3] + users[u],
                              MID[(b >> 10) & 1023], TK[(b >> 32) & 3] + tsv,
                              TAIL[(b >> 20) & 1023])
            else:
                line = fmt % (LEAD[b & 1023], TK[(b >> 32) & 3] + tsv,
                              MID[(b >> 10) & 1023], UK[(b >> 30) & 3] + users[u],
                              TAIL[(b >> 20) & 1023])
            cur_set.add(u)
            cur_n += 1
            last_valid = ts
        elif r >= c_flip:  # valid, ts as a numeric string
            U = UK[(b >> 30) & 3] + users[u]
            T = TK[(b >> 32) & 3] + tsq
            if b >> 35:
                line = fmt % (LEAD[b & 1023], U, MID[(b >> 10) & 1023], T,
                              TAIL[(b >> 20) & 1023])
            else:
                line = fmt % (LEAD[b & 1023], T, MID[(b >> 10) & 1023], U,
                              TAIL[(b >> 20) & 1023])
            n_str += 1
            cur_set.add(u)
            cur_n += 1
            last_valid = ts
        elif r >= c_mal:  # bit flip: valid-looking, ts_outlier
            bit = flip_lo + int(rnd() * flip_span)
            U = UK[(b >> 30) & 3] + users[u]
            T = TK[(b >> 32) & 3] + str(ts ^ (1 << bit))
            if b >> 35:
                line = fmt % (LEAD[b & 1023], U, MID[(b >> 10) & 1023], T,
                              TAIL[(b >> 20) & 1023])
            else:
                line = fmt % (LEAD[b & 1023], T, MID[(b >> 10) & 1023], U,
                              TAIL[(b >> 20) & 1023])
            n_flip += 1
        else:  # malformed: the kind comes from r, uniform within [0, c_mal)
            kind = min(4, int(r / c_mal * 5))
            U = UK[(b >> 30) & 3] + users[u]
            T = TK[(b >> 32) & 3] + tsv
            lead, mid = LEAD[b & 1023], MID[(b >> 10) & 1023]
            tail = TAIL[(b >> 20) & 1023]
            if kind == 0:
                reason = R.MALFORMED_JSON
                full = fmt % (lead, U, mid, T, tail)
                sub = int(rnd() * 8)
                if sub <= 1:  # truncated (a proper prefix of an object is never JSON)
                    line = full[: 1 + int(rnd() * (len(full) - 1))]
                elif sub == 2:
                    line = _NON_JSON[int(rnd() * len(_NON_JSON))]
                elif sub == 3:
                    line = "[" + full + "]"
                elif sub == 4:
                    line = (tsv, "-12.5", "1e9", "0")[int(rnd() * 4)]
                elif sub == 5:
                    line = '"' + full.replace("\\", "\\\\").replace('"', '\\"') + '"'
                elif sub == 6:  # trailing comma
                    line = full[:-1] + ",}"
                else:  # missing comma after the first of uid/ts
                    line = "{%s%s %s%s%s}" % (lead, U, mid, T, tail)
            elif kind == 1:
                reason = R.MISSING_TS
                line = "{%s%s%s%s}" % (lead, mid, U, RICH[(b >> 20) & 1023])
            elif kind == 2:
                reason = R.BAD_TS
                T = TK[(b >> 32) & 3] + _BAD_TS[int(rnd() * len(_BAD_TS))]
                line = fmt % ((lead, U, mid, T, tail) if b >> 35 else
                              (lead, T, mid, U, tail))
            elif kind == 3:
                reason = R.MISSING_UID
                line = "{%s%s%s%s}" % (lead, mid, T, RICH[(b >> 20) & 1023])
            else:
                reason = R.BAD_UID
                U = UK[(b >> 30) & 3] + _BAD_UID[int(rnd() * len(_BAD_UID))]
                line = fmt % ((lead, U, mid, T, tail) if b >> 35 else
                              (lead, T, mid, U, tail))
            defects[reason] += 1

        if p_delay and rnd() < p_delay:
            d = 1 + int(rnd() * max_delay)
            push(heap, (ts + d, i, line))
            n_delayed += 1
            if d > max_d:
                max_d = d
        else:
            while heap and heap[0][0] <= ts:
                out.append(pop(heap)[2])
            out.append(line)

        # advance the clock
        if adv_frac and rnd() < adv_frac:
            adv = adv_int + 1
        else:
            adv = adv_int
        if adv:
            if cur_n and first_valid is None:
                # cur_n was 0 at every earlier advance: all valid frames are at ts
                first_valid = ts
            ts += adv
            tsv = str(ts)
            tsq = '"' + tsv + '"'
            m = ts - ts % 60
            if m != minute:
                if cur_n:
                    truth.minutes[minute] = (cur_set, cur_n)
                minute = m
                cur_set, cur_n = set(), 0
        if len(out) >= BATCH:
            yield out, i + 1
            out = []

    if cur_n:
        truth.minutes[minute] = (cur_set, cur_n)
        if first_valid is None:
            first_valid = ts
    while heap:
        out.append(pop(heap)[2])
    if out or cfg.count == 0:
        yield out, cfg.count

    defects["string_ts"] = n_str
    defects[R.TS_OUTLIER] = n_flip
    defects["delayed"] = n_delayed
    truth.max_delay_used = max_d
    truth.frames = cfg.count
    truth.ts_min = first_valid
    truth.ts_max = last_valid


def generate(cfg: GenConfig) -> tuple[list[bytes], dict]:
    """All lines (bytes, no newline) in arrival order and the truth dict."""
    truth = _Truth(cfg)
    lines: list[bytes] = []
    for batch, _ in _batches(cfg, truth):
        enc = [s.encode("utf-8") for s in batch]
        truth.bytes += sum(map(len, enc))
        lines.extend(enc)
    return lines, truth.result()


def _gzip_member(data: bytes) -> bytes:
    """One complete gzip member (level 1, mtime 0, no name) of ``data``."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def write(cfg: GenConfig, out: str, truth_path: str | None = None,
          progress: bool = True) -> dict:
    """Stream the frames to ``out`` ('-' = stdout, gzip if it ends in .gz).

    Lines are newline-terminated. A ``.gz`` output is a concatenation of gzip
    members (one per ~16 MB chunk, compresslevel 1), compressed by two helper threads
    (zlib releases the GIL) while the main thread generates; ``gzip``/``zcat``/Hadoop
    read it as one stream. The file appears under its final name only when complete
    (written as ``out + '.tmp'`` first). Returns the truth dict, also written as JSON
    to ``truth_path`` if given.
    """
    validate(cfg)
    truth = _Truth(cfg)
    t0 = time.monotonic()
    next_report = 100_000
    gz = out.endswith(".gz") and out != "-"
    tmp = None
    if out == "-":
        fh = sys.stdout.buffer
    else:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        fh = open(tmp, "wb")
    ok = False
    try:
        with ThreadPoolExecutor(max_workers=2 if gz else 1) as pool:
            pending: deque[Future] = deque()
            for batch, done in _batches(cfg, truth):
                if batch:
                    data = ("\n".join(batch) + "\n").encode("utf-8")
                    truth.bytes += len(data) - len(batch)
                    if gz:
                        pending.append(pool.submit(_gzip_member, data))
                        while len(pending) > 3:  # in order; bounded memory
                            fh.write(pending.popleft().result())
                    else:
                        pending.append(pool.submit(fh.write, data))
                        while len(pending) > 2:  # surfaces I/O errors early
                            pending.popleft().result()
                if progress and done >= next_report:
                    el = time.monotonic() - t0
                    print(f"generator: {done}/{cfg.count} frames "
                          f"({100.0 * done / max(cfg.count, 1):.0f}%) {el:.1f}s "
                          f"{done / max(el, 1e-9):,.0f} frames/s",
                          file=sys.stderr, flush=True)
                    while next_report <= done:
                        next_report += 100_000
            while pending:
                r = pending.popleft().result()
                if gz:
                    fh.write(r)
            if gz and truth.frames == 0:
                fh.write(_gzip_member(b""))  # an empty but valid gzip file
        if tmp is not None:
            fh.close()
            os.replace(tmp, out)
        else:
            fh.flush()
        ok = True
    finally:
        if not ok and tmp is not None:
            try:
                fh.close()
                os.unlink(tmp)
            except OSError:
                pass
    result = truth.result()
    if truth_path:
        os.makedirs(os.path.dirname(os.path.abspath(truth_path)), exist_ok=True)
        with open(truth_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        os.replace(truth_path + ".tmp", truth_path)
    return result


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.generator",
        description="Write deterministic doodle-like JSONL frames (+ ground truth).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = GenConfig()
    helps = {
        "count": "number of lines to write",
        "rate": "frames per second of event time (clock advances w.p. 1/rate)",
        "users": "size of the uid pool",
        "seed": "random seed (same seed -> identical bytes)",
        "start_ts": "first ts (unix seconds)",
        "max_delay": "max delivery delay in seconds",
        "delay_prob": "fraction of frames delivered late (by 1..max_delay s)",
        "string_ts_frac": "fraction of frames that are valid with ts as a numeric "
                          "string",
        "malformed_frac": "fraction of invalid frames (malformed_json, missing_ts, "
                          "bad_ts, missing_uid, bad_uid, evenly)",
        "bitflip_frac": "fraction of frames with one bit of ts flipped (ts_outlier)",
        "bitflip_min_bit": "lowest bit that may be flipped",
        "bitflip_max_bit": "highest bit that may be flipped",
    }
    for f in fields(GenConfig):
        typ = int if isinstance(getattr(d, f.name), int) else float
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ,
                       default=getattr(d, f.name), help=helps[f.name])
    p.add_argument("--out", required=True,
                   help="output path ('-' = stdout; gzip level 1 if it ends in .gz)")
    p.add_argument("--truth", default=None, help="write the ground truth JSON here")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines (the final summary is still printed)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 2 on bad options."""
    p = _parser()
    a = p.parse_args(argv)
    cfg = GenConfig(**{f.name: getattr(a, f.name) for f in fields(GenConfig)})
    try:
        validate(cfg)
    except ValueError as e:
        p.error(str(e))  # exits 2
    t0 = time.monotonic()
    try:
        truth = write(cfg, a.out, a.truth, progress=not a.no_progress)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # silence the flush at exit
        except OSError:
            pass
        print("generator: output pipe closed early", file=sys.stderr)
        return 1
    el = time.monotonic() - t0
    n = truth["frames"]
    d = truth["defects"]
    print(f"generator: wrote {n} frames ({truth['valid_frames']} valid, "
          f"{truth['unique_users_total']} users, {len(truth['minutes'])} minutes, "
          f"mean {truth['bytes'] / max(n, 1):.0f} B/frame) to {a.out} in {el:.1f}s; "
          "defects " + " ".join(f"{k}={v}" for k, v in d.items())
          + (f"; truth {a.truth}" if a.truth else ""),
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
