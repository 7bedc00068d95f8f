"""The reference frame parser: the definition of what a good frame is.

__all__ = ["MAX_DEPTH", "load_schema", "load_frame", "reference_parse"]

``reference_parse(raw) -> (ts, uid, reason)`` is slow and obviously correct; the JVM fast
parser (``java/``, ``doodle.udf.FrameParser``) and the pure-Python fast path
(:mod:`doodlestats.batch.pyparse`) are tested to return exactly the same triple for every input.

Steps:

1. ``raw`` is decoded strictly as UTF-8 (overlongs, encoded surrogates and code points above
   U+10FFFF are errors) and parsed with :func:`json.loads`, with ``NaN``/``Infinity``/
   ``-Infinity`` rejected. Any error, or a root that is not an object, is ``malformed_json``.
2. The root ``ts`` and ``uid`` are checked against the ``properties.ts`` / ``properties.uid``
   subschemas of ``doodlestats/schemas/frame.schema.json`` (package data, read with
   :mod:`importlib.resources`; JSON Schema draft 2020-12, ``jsonschema``), in
   the precedence order ``missing_ts``, ``bad_ts``, ``missing_uid``, ``bad_uid``.
3. Cross-check: the ts/uid verdict is good exactly when the whole document validates against
   the whole schema; a disagreement raises ``AssertionError`` (a bug here, not in the frame).
4. A root uid holding a lone surrogate is ``bad_uid`` (see below).

Returned fields: ``ts`` (an ``int``) is set whenever the root ts itself is valid and ``uid``
whenever the root uid itself is valid, even if the other field makes the frame bad (so a
``bad_uid`` frame still carries its ts); both are ``None`` for ``malformed_json``.

Corners decided here (the JVM parser mirrors each one):

* **Pattern semantics.** JSON Schema patterns are ECMA-262 regular expressions. Python's
  ``re.search`` lets ``$`` match before a trailing newline, so ``jsonschema`` alone would accept
  ``"123\\n"`` as a ts string; ECMA-262 ``$`` (without the ``m`` flag) matches only at the very
  end. The validator used here therefore translates ``$`` to ``\\Z`` and compiles with
  ``re.ASCII`` (so ``\\d`` would be ASCII-only, as in ECMA-262): a ts string must be 1..12 ASCII
  digits, full match, no sign, space or newline. Its value may exceed 253402300799 (the schema
  bounds only the integer branch).
* **Numbers with a fraction or exponent** are Python floats (IEEE-754 doubles, correctly
  rounded); JSON Schema ``integer`` accepts a float whose value is integral, so the *double*
  decides: ``1468244384.0`` and ``1.468244384e9`` are ts 1468244384, ``-0.0`` and ``1e-400``
  (underflows to 0.0) are ts 0, ``1e400`` (inf) is ``bad_ts``, and a literal such as
  ``1468244384.00000000001`` that rounds to an integral double is accepted. The ts is
  ``int(value)``.
* **Huge integers.** Python refuses ``int()`` of more than 4300 digits (a ``ValueError`` that
  would look like malformed JSON); such integers are valid JSON, so they are parsed to a
  sentinel of the right sign that is far out of every range here (their exact value cannot
  matter: only the root ts is ever read, and it is then ``bad_ts``).
* **Nesting depth.** ``json.loads`` recurses and its limit depends on the caller's stack, so the
  contract fixes one: containers nested deeper than :data:`MAX_DEPTH` (512; the root object is
  depth 1) make the frame ``malformed_json``.
* **Escapes.** ``\\uXXXX`` escapes follow ``json.loads``: a surrogate pair combines into one
  code point, and a lone surrogate escape is accepted (anywhere in the document). Keys may be
  written with escapes (``"\\u0075id"`` is ``uid``); on duplicate keys the last wins.
* **Lone surrogates in the uid** (the one rule beyond ``json.loads`` + the schema): a root uid
  that contains a lone surrogate (e.g. ``"\\ud800"``) is ``bad_uid``. It is no valid Unicode
  string (RFC 8259 section 8.2): it cannot be encoded to UTF-8 for Arrow (the Python path would
  fail the whole batch) and Spark's ``UTF8String`` would silently turn it into ``?`` (merging
  distinct uids). So the frame is quarantined instead.
* A UTF-8 BOM is not JSON whitespace: ``malformed_json``. Empty input and ``None`` too.
"""

from __future__ import annotations

import functools
import json
import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from doodlestats.batch.reasons import BAD_TS, BAD_UID, MALFORMED_JSON, MISSING_TS, MISSING_UID

#: The schemas are package data: a file on disk from a source tree or an installed wheel, a
#: member of the zip when the package is shipped to executors with ``--py-files``.
SCHEMAS: Traversable = files("doodlestats") / "schemas"
SCHEMA_PATH: Traversable = SCHEMAS / "frame.schema.json"

#: Containers nested deeper than this (root object = depth 1) are malformed_json.
MAX_DEPTH = 512

Result = tuple[int | None, str | None, str | None]

_BIG_INT = 10**100  # sentinel for integers too long for int() (see module doc); repr()-able


@functools.lru_cache(maxsize=64)
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile an ECMA-262 pattern (no flags) for ``re.search`` with ECMA semantics.

    Only the differences that matter for simple patterns are handled: ``$`` outside a
    character class becomes ``\\Z`` (end of input only) and ``re.ASCII`` makes ``\\d``, ``\\w``,
    ``\\s`` ASCII-only like ECMA-262 without the ``u`` flag.
    """
    out = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return re.compile("".join(out), re.ASCII)


def _ecma_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, validators={"pattern": _ecma_pattern})


def load_schema(name: str = "frame.schema.json") -> dict:
    """A schema of the package (default: the frame schema) as a dict."""
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validators() -> tuple[Any, Any, Any]:
    """Validators (ECMA-262 ``pattern``) for the whole frame, its ``ts`` and its ``uid``."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    props = schema["properties"]
    return _Validator(schema), _Validator(props["ts"]), _Validator(props["uid"])


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse_int(s: str) -> int:
    try:
        return int(s)
    except ValueError:  # more than sys.get_int_max_str_digits() digits
        return -_BIG_INT if s.startswith("-") else _BIG_INT


def _too_deep(doc: Any) -> bool:
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def load_frame(raw: bytes | bytearray | memoryview | None) -> dict | None:
    """The frame's root object, or ``None`` if the frame is malformed_json."""
    if raw is None:
        return None
    try:
        text = bytes(raw).decode("utf-8")
        doc = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError are ValueErrors
        return None
    if not isinstance(doc, dict) or _too_deep(doc):
        return None
    return doc


_MISSING = object()


def reference_parse(raw: bytes | bytearray | memoryview | None) -> Result:
    """``(ts, uid, reason)`` of one Kafka message value; see the module docstring."""
    doc = load_frame(raw)
    if doc is None:
        return None, None, MALFORMED_JSON
    frame_v, ts_v, uid_v = _validators()

    ts_val, ts, ts_reason = _field(doc, "ts", ts_v, MISSING_TS, BAD_TS, int)  # int, integral float, 1..12 digits
    uid_val, uid, uid_reason = _field(doc, "uid", uid_v, MISSING_UID, BAD_UID, str)

    reason = ts_reason or uid_reason
    whole_valid = frame_v.is_valid(doc)
    if whole_valid != (reason is None):
        raise AssertionError(
            f"reference disagrees with the whole schema: reason={reason!r}, "
            f"schema valid={whole_valid} for ts={ts_val!r} uid={uid_val!r}"
        )
    if uid is not None and _has_lone_surrogate(uid):
        uid, uid_reason = None, BAD_UID  # the one rule beyond the schema; see module doc
        reason = ts_reason or uid_reason
    return ts, uid, reason


def _field(doc: dict, name: str, validator, missing: str, bad: str, convert):
    """(the raw value or ``_MISSING``, the converted value or None, the reason or None)."""
    val = doc.get(name, _MISSING)
    if val is _MISSING:
        return val, None, missing
    if validator.is_valid(val):
        return val, convert(val), None
    return val, None, bad


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
