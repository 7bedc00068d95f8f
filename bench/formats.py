"""Binary format comparison: the same frames as JSON and as Avro, size and decode speed.

    python -m bench.formats --input data/stream.jsonl.gz --limit 200000

Avro schemas: ``bench/frame.avsc`` (``{ts: long, uid: string, payload: string}`` with
``payload`` = every other root key of the frame as JSON text) and a compact variant
without ``payload`` (``{ts, uid}`` — what the job actually needs). Records are encoded
one per message, without a container (``fastavro.schemaless_writer``), as a producer
would put them into Kafka.

Reported per format: bytes/frame raw, and bytes/frame when 1,000 consecutive frames
are compressed together with lz4 (what the Kafka producer does per batch); the decode
rate of a single Python thread getting ``ts`` and ``uid`` out of each message —
``orjson.loads`` and pysimdjson's lazy root look-up on the JSON frames,
``fastavro.schemaless_reader`` on the Avro ones.

``payload`` is re-serialised by orjson (no insignificant whitespace, raw UTF-8 instead
of ``\\uXXXX``, ``/`` unescaped), so a "json re-serialised by orjson" row separates
that gain from Avro's own. Frames that orjson cannot parse are skipped (the sample has
none). Duplicate root keys collapse to the last value (the frames repeat noise keys).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parent / "frame.avsc"


def schemas() -> tuple[dict, dict]:
    """(full, compact) parsed Avro schemas."""
    import fastavro
    full = json.loads(SCHEMA_FILE.read_text())
    compact = {**full, "name": "FrameCompact", "fields": [f for f in full["fields"] if f["name"] != "payload"]}
    return fastavro.parse_schema(full), fastavro.parse_schema(compact)


def encode(lines: list[bytes]) -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    """(json frames kept, json re-serialised by orjson, avro full, avro compact) — one
    encoded message per frame."""
    import fastavro
    import orjson
    full_s, compact_s = schemas()
    kept, rejson, full, compact = [], [], [], []
    w = fastavro.schemaless_writer
    for line in lines:
        try:
            d = orjson.loads(line)
            ts, uid = int(d.pop("ts")), d.pop("uid")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
        if not isinstance(uid, str):
            continue
        kept.append(line)
        rejson.append(orjson.dumps({"ts": ts, "uid": uid, **d}))
        buf = io.BytesIO()
        w(buf, full_s, {"ts": ts, "uid": uid, "payload": orjson.dumps(d).decode()})
        full.append(buf.getvalue())
        buf = io.BytesIO()
        w(buf, compact_s, {"ts": ts, "uid": uid})
        compact.append(buf.getvalue())
    return kept, rejson, full, compact


def lz4_batched(msgs: list[bytes], batch: int = 1000) -> float:
    """Mean bytes/frame when ``batch`` consecutive messages are lz4-compressed together."""
    import pyarrow as pa
    total = 0
    for i in range(0, len(msgs), batch):
        total += pa.compress(b"".join(msgs[i:i + batch]), codec="lz4", asbytes=True).__len__()
    return total / max(len(msgs), 1)


def _rate(fn, msgs: list[bytes], repeat: int) -> float:
    best = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn(msgs)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return len(msgs) / max(best, 1e-9)


def decode_orjson(msgs):
    import orjson
    loads = orjson.loads
    for m in msgs:
        d = loads(m)
        d["ts"], d["uid"]


def decode_simdjson(msgs):
    import simdjson
    p = simdjson.Parser()
    for m in msgs:
        doc = p.parse(m)
        doc.get("ts"), doc.get("uid")
        del doc


def _avro_decoder(schema):
    import fastavro
    read = fastavro.schemaless_reader

    def decode(msgs):
        for m in msgs:
            r = read(io.BytesIO(m), schema, None)
            r["ts"], r["uid"]
    return decode


def compare(lines: list[bytes], repeat: int = 2, progress=None) -> dict:
    """Sizes and single-thread decode rates of JSON vs Avro (full, compact)."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    kept, rejson, full, compact = encode(lines)
    say(f"formats: encoded {len(kept):,} frames as Avro in {time.perf_counter() - t0:.1f}s")
    full_s, compact_s = schemas()
    n = max(len(kept), 1)
    rows = [
        {"name": "json (orjson.loads)", "format": "json", "bytes_per_frame": sum(map(len, kept)) / n,
         "lz4_bytes_per_frame": lz4_batched(kept), "decode_frames_per_s": _rate(decode_orjson, kept, repeat)},
        {"name": "json (pysimdjson root look-up)", "format": "json", "bytes_per_frame": sum(map(len, kept)) / n,
         "lz4_bytes_per_frame": lz4_batched(kept), "decode_frames_per_s": _rate(decode_simdjson, kept, repeat)},
        {"name": "json re-serialised by orjson (orjson.loads)", "format": "json",
         "bytes_per_frame": sum(map(len, rejson)) / n, "lz4_bytes_per_frame": lz4_batched(rejson),
         "decode_frames_per_s": _rate(decode_orjson, rejson, repeat)},
        {"name": "avro full {ts, uid, payload}", "format": "avro", "bytes_per_frame": sum(map(len, full)) / n,
         "lz4_bytes_per_frame": lz4_batched(full),
         "decode_frames_per_s": _rate(_avro_decoder(full_s), full, repeat)},
        {"name": "avro compact {ts, uid}", "format": "avro", "bytes_per_frame": sum(map(len, compact)) / n,
         "lz4_bytes_per_frame": lz4_batched(compact),
         "decode_frames_per_s": _rate(_avro_decoder(compact_s), compact, repeat)},
    ]
    for r in rows:
        for k in ("bytes_per_frame", "lz4_bytes_per_frame", "decode_frames_per_s"):
            r[k] = round(r[k], 1)
        say(f"formats: {r['name']}: {r['bytes_per_frame']:,.0f} B/frame ({r['lz4_bytes_per_frame']:,.0f} lz4), "
            f"{r['decode_frames_per_s']:,.0f} frames/s")
    return {"frames": len(kept), "schema": str(SCHEMA_FILE.name), "repeat": repeat, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.formats", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="JSONL file (.gz ok)")
    ap.add_argument("--limit", type=int, default=200_000, help="frames to use (default 200000)")
    ap.add_argument("--repeat", type=int, default=2, help="decode runs per format; best counts")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import read_lines
    if not Path(args.input).exists():
        print(f"formats: error: input not found: {args.input}", file=sys.stderr)
        return 2
    res = compare(read_lines(Path(args.input), args.limit), args.repeat,
                  lambda m: print(m, file=sys.stderr, flush=True))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
