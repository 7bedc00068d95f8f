"""Tests of tools.generator, checked with an independent plain-Python parser.

Nothing here uses the generator's internals: every property is re-derived from the
output lines with ``json.loads`` and the contract of schemas/frame.schema.json.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.generator import GenConfig, generate, validate, write  # noqa: E402

TS_MAX = 253402300799
TS_STR = re.compile(r"[0-9]{1,12}")
UID_RE = re.compile(r"[0-9a-f]{19}")
PRECEDENCE = ("malformed_json", "missing_ts", "bad_ts", "missing_uid", "bad_uid")
OUTLIER = 2**19  # |ts - median(neighbours)| above this = bit-flipped
WINDOW = 10


# ----------------------------------------------------------------- independent parser
class Obj(list):
    """A JSON object as its list of (key, value) pairs (keeps duplicates/order)."""


def _reject(c: str):
    raise ValueError(f"non-JSON constant {c}")


def parse(line: bytes):
    return json.loads(line, object_pairs_hook=Obj, parse_constant=_reject)


def ts_ok(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return 0 <= v <= TS_MAX
    return isinstance(v, str) and TS_STR.fullmatch(v) is not None


def reasons_of(line: bytes) -> tuple[set[str], object]:
    """All parse reasons that apply (empty set = schema-valid), and the parse."""
    try:
        obj = parse(line)
    except ValueError:  # includes UnicodeDecodeError
        return {"malformed_json"}, None
    if not isinstance(obj, Obj):
        return {"malformed_json"}, obj
    ts = [v for k, v in obj if k == "ts"]
    uid = [v for k, v in obj if k == "uid"]
    r = set()
    if not ts:
        r.add("missing_ts")
    elif not all(ts_ok(v) for v in ts):
        r.add("bad_ts")
    if not uid:
        r.add("missing_uid")
    elif not all(isinstance(v, str) and v for v in uid):
        r.add("bad_uid")
    return r, obj


def first_reason(r: set[str]) -> str:
    return next(x for x in PRECEDENCE if x in r)


def root(obj: Obj, key: str):
    vals = [v for k, v in obj if k == key]
    assert len(vals) == 1, (key, vals)
    return vals[0]


def nested_keys(v, depth=0):
    """Yield (depth, key, value) of every key below the root object."""
    if isinstance(v, Obj):
        for k, x in v:
            if depth > 0:
                yield depth, k, x
            yield from nested_keys(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            yield from nested_keys(x, depth + 1)


def leaves(v):
    if isinstance(v, Obj):
        for _, x in v:
            yield from leaves(x)
    elif isinstance(v, list):
        for x in v:
            yield from leaves(x)
    else:
        yield v


class Analysis:
    """Independent recount of one generated stream."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.reasons: Counter[str] = Counter()
        self.invalid: list[tuple[set[str], object, bytes]] = []
        self.ok: list[tuple[int, int, str, object]] = []  # (pos, ts, uid, obj)
        for pos, line in enumerate(lines):
            r, obj = reasons_of(line)
            if r:
                self.reasons[first_reason(r)] += 1
                self.invalid.append((r, obj, line))
            else:
                self.ok.append((pos, int(root(obj, "ts")), root(obj, "uid"), obj))
        tss = [t for _, t, _, _ in self.ok]
        self.outlier_idx: set[int] = set()
        self.outlier_dev: list[int] = []
        for j, t in enumerate(tss):
            nb = tss[max(0, j - WINDOW):j] + tss[j + 1:j + 1 + WINDOW]
            if nb and abs(t - statistics.median(nb)) > OUTLIER:
                self.outlier_idx.add(j)
                self.outlier_dev.append(int(abs(t - statistics.median(nb))))
        self.valid = [x for j, x in enumerate(self.ok) if j not in self.outlier_idx]

    def truth_view(self) -> dict:
        minutes: dict[int, list] = {}
        for _, t, u, _ in self.valid:
            m = minutes.setdefault(t - t % 60, [set(), 0])
            m[0].add(u)
            m[1] += 1
        tss = [t for _, t, _, _ in self.valid]
        return {
            "frames": len(self.lines),
            "valid_frames": len(self.valid),
            "defects": {**{k: self.reasons.get(k, 0) for k in PRECEDENCE},
                        "ts_outlier": len(self.outlier_idx),
                        "string_ts": sum(isinstance(root(o, "ts"), str)
                                         for _, _, _, o in self.valid)},
            "minutes": [{"minute": m, "unique_users": len(s), "frames": n}
                        for m, (s, n) in sorted(minutes.items())],
            "unique_users_total": len({u for _, _, u, _ in self.valid}),
            "ts_min": min(tss) if tss else None,
            "ts_max": max(tss) if tss else None,
            "bytes": sum(map(len, self.lines)),
        }


def compare_truth(truth: dict, a: Analysis) -> None:
    mine = a.truth_view()
    got = {k: truth[k] for k in mine}
    got["defects"] = {k: v for k, v in truth["defects"].items() if k != "delayed"}
    assert got == mine


# ----------------------------------------------------------------- fixtures
CLEAN = GenConfig(count=8000, rate=20, users=100_000, seed=3)
MIXED = GenConfig(count=20_000, rate=100, users=5000, seed=7, string_ts_frac=0.1,
                  malformed_frac=0.15, bitflip_frac=0.05, delay_prob=0.1, max_delay=20)


@pytest.fixture(scope="module")
def clean():
    lines, truth = generate(CLEAN)
    return lines, truth, Analysis(lines)


@pytest.fixture(scope="module")
def mixed():
    lines, truth = generate(MIXED)
    return lines, truth, Analysis(lines)


# ----------------------------------------------------------------- shape
def test_valid_frames_shape(clean):
    lines, truth, a = clean
    assert len(lines) == CLEAN.count and not a.invalid and not a.outlier_idx
    orders, leading = Counter(), Counter()
    for line in lines:
        assert b"\n" not in line and b"\r" not in line
        text = line.decode("utf-8")
        assert all(ord(c) >= 0x20 for c in text)  # no raw control characters
    for _, _ts, uid, obj in a.ok:
        assert UID_RE.fullmatch(uid)
        assert type(root(obj, "ts")) is int
        keys = [k for k, _ in obj]
        iu, it = keys.index("uid"), keys.index("ts")
        orders["uid_first" if iu < it else "ts_first"] += 1
        leading[min(iu, it)] += 1
    assert orders["uid_first"] > 0.3 * len(lines) and orders["ts_first"] > 0.3 * len(lines)
    assert set(leading) == {0, 1, 2, 3}
    tss = [t for _, t, _, _ in a.ok]
    assert tss[0] == CLEAN.start_ts
    assert tss == sorted(tss)  # no delay: arrival order == event order
    advances = tss[-1] - tss[0]  # ~ Binomial(count, 1/rate); 400 +- 20
    assert 0.8 * CLEAN.count / CLEAN.rate <= advances <= 1.2 * CLEAN.count / CLEAN.rate
    # root separators: sometimes with whitespace
    assert any(b'"ts": ' in ln or b'"ts" :' in ln for ln in lines[:200])


def test_mean_size(clean):
    lines, truth, _ = clean
    mean = sum(map(len, lines)) / len(lines)
    assert 1900 <= mean <= 2400, mean
    assert truth["bytes"] == sum(map(len, lines))


def test_nested_decoys(clean):
    _, _, a = clean
    with_uid = with_ts = before_root = 0
    decoy_ts_ints, decoy_uids = set(), set()
    for _, ts, uid, obj in a.ok:
        nk = list(nested_keys(obj))
        if any(k == "uid" for _, k, _ in nk):
            with_uid += 1
        if any(k == "ts" for _, k, _ in nk):
            with_ts += 1
        decoy_ts_ints |= {v for _, k, v in nk if k == "ts" and type(v) is int and v != ts}
        decoy_uids |= {v for _, k, v in nk if k == "uid" and isinstance(v, str)
                       and UID_RE.fullmatch(v) and v != uid}
        keys = [k for k, _ in obj]
        first = min(keys.index("uid"), keys.index("ts"))
        if any(k in ("uid", "ts") for _, x in obj[:first] for _, k, _ in nested_keys(Obj([("", x)]))):
            before_root += 1
        assert max((d for d, _, _ in nk), default=0) <= 6
    n = len(a.ok)
    assert with_uid > 0.3 * n and with_ts > 0.3 * n
    assert before_root > 0.05 * n  # decoys also come before the root keys
    assert len(decoy_ts_ints) > 1000 and len(decoy_uids) > 1000
    deep = sum(1 for _, _, _, o in a.ok
               if any(d >= 2 and k in ("uid", "ts") for d, k, _ in nested_keys(o)))
    assert deep > 0.1 * n  # decoys 2-3 levels deep
    # root-level decoy names for prefix matchers
    assert sum(1 for _, _, _, o in a.ok if any(k in ("ts_ms", "uidx", "user_uid")
                                              for k, _ in o)) > 0.1 * n


def test_duplicate_root_keys(clean):
    _, _, a = clean
    dup_frames = 0
    for _, _, _, obj in a.ok:
        c = Counter(k for k, _ in obj)
        assert c["uid"] == 1 and c["ts"] == 1
        if any(v > 1 for v in c.values()):
            dup_frames += 1
    assert dup_frames > 0.05 * len(a.ok)


def _has_escape(text: str, esc: str) -> bool:
    # esc preceded by an odd number of backslashes (so "\\n" is not a "\n")
    return re.search(r"(?<!\\)(?:\\\\)*\\" + esc, text) is not None


def test_escapes_unicode_and_numbers(clean):
    lines, _, a = clean
    text = b"\n".join(lines[:3000]).decode("utf-8")
    for esc in ('"', r"\\", "n", "t", "b", "f", "r", "/", "u[0-9a-fA-F]{4}",
                r"ud[89ab][0-9a-fA-F]{2}\\ud[c-f][0-9a-fA-F]{2}"):
        assert _has_escape(text, esc), esc
    assert re.search("[\u0400-\u04ff]", text)  # raw UTF-8 Cyrillic
    vals = [v for _, _, _, o in a.ok[:3000] for v in leaves(o)]
    strs = "".join(v for v in vals if isinstance(v, str))
    for ch in '"\\\n\t\b\f\r/\u00e9\u041f':
        assert ch in strs, repr(ch)
    assert any(type(v) is int and v < 0 for v in vals)
    assert any(type(v) is float for v in vals)
    assert re.search(r"[0-9][eE][-+]?[0-9]", text)
    for const in (True, False, None):
        assert any(v is const for v in vals)


# ----------------------------------------------------------------- defects
def test_defect_fractions(mixed):
    lines, truth, a = mixed
    n = len(lines)

    def near(got: int, frac: float, tol: float = 0.15) -> bool:
        return abs(got - frac * n) <= tol * frac * n

    assert near(sum(a.reasons.values()), MIXED.malformed_frac)
    for k in PRECEDENCE:
        assert near(a.reasons[k], MIXED.malformed_frac / 5, 0.25), (k, a.reasons)
    assert near(len(a.outlier_idx), MIXED.bitflip_frac)
    n_str = sum(isinstance(root(o, "ts"), str) for _, _, _, o in a.valid)
    assert near(n_str, MIXED.string_ts_frac)
    assert near(truth["defects"]["delayed"], MIXED.delay_prob)


def test_each_defect_has_exactly_one_reason(mixed):
    _, _, a = mixed
    kinds: dict[str, list] = {k: [] for k in PRECEDENCE}
    for r, obj, line in a.invalid:
        assert len(r) == 1, (r, line[:200])
        kinds[next(iter(r))].append((obj, line))
    assert all(kinds.values())
    # malformed_json: unparsable text AND parsable non-objects (array, number, string)
    roots = Counter("unparsable" if o is None else type(o).__name__
                    for o, _ in kinds["malformed_json"])
    assert roots["unparsable"] > 0 and roots["list"] > 0 and roots["str"] > 0
    assert roots["int"] + roots["float"] > 0
    # missing_*: a nested decoy of the missing key is always there
    for o, _ in kinds["missing_uid"]:
        assert any(k == "uid" for _, k, _ in nested_keys(o))
    for o, _ in kinds["missing_ts"]:
        assert any(k == "ts" for _, k, _ in nested_keys(o))
    bad_ts = Counter(type(root(o, "ts")).__name__ for o, _ in kinds["bad_ts"])
    assert {"str", "float", "bool", "NoneType", "int", "Obj"} <= set(bad_ts), bad_ts
    bad_uid = Counter(type(root(o, "uid")).__name__ for o, _ in kinds["bad_uid"])
    assert {"str", "int", "NoneType"} <= set(bad_uid), bad_uid


def test_bitflips_are_single_bit_jumps(mixed):
    _, _, a = mixed
    assert a.outlier_dev
    for dev in a.outlier_dev:
        assert any(abs(dev - 2**b) <= 200 for b in range(20, 31)), dev


def test_bitflip_bit_range():
    cfg = GenConfig(count=3000, rate=100, seed=5, bitflip_frac=0.05,
                    bitflip_min_bit=25, bitflip_max_bit=25)
    lines, truth = generate(cfg)
    a = Analysis(lines)
    assert len(a.outlier_idx) == truth["defects"]["ts_outlier"] > 100
    assert all(abs(d - 2**25) <= 60 for d in a.outlier_dev)


def test_delays_bounded(mixed):
    _, truth, a = mixed
    running, late, worst = -1, 0, 0
    for _, t, _, _ in a.valid:
        if t < running:
            late += 1
            worst = max(worst, running - t)
        running = max(running, t)
    assert late > 0
    assert worst <= MIXED.max_delay
    assert 1 <= truth["max_delay_used"] <= MIXED.max_delay


# ----------------------------------------------------------------- truth
def test_truth_matches_recount(mixed):
    _, truth, a = mixed
    compare_truth(truth, a)
    assert truth["params"] == {
        "count": 20000, "rate": 100, "users": 5000, "seed": 7, "start_ts": 1468244384,
        "max_delay": 20, "delay_prob": 0.1, "string_ts_frac": 0.1,
        "malformed_frac": 0.15, "bitflip_frac": 0.05, "bitflip_min_bit": 20,
        "bitflip_max_bit": 30}
    assert len(truth["minutes"]) >= 3


def test_truth_clean(clean):
    _, truth, a = clean
    compare_truth(truth, a)
    assert truth["valid_frames"] == CLEAN.count


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(count=st.integers(200, 600), rate=st.sampled_from([0.05, 0.5, 1.0, 7.0, 250.0]),
       users=st.integers(1, 300), seed=st.integers(0, 10**6),
       string_ts=st.floats(0, 0.3), malformed=st.floats(0, 0.3),
       bitflip=st.floats(0, 0.08), delay=st.floats(0, 0.5), max_delay=st.integers(0, 30))
def test_truth_property(count, rate, users, seed, string_ts, malformed, bitflip,
                        delay, max_delay):
    cfg = GenConfig(count=count, rate=rate, users=users, seed=seed,
                    string_ts_frac=string_ts, malformed_frac=malformed,
                    bitflip_frac=bitflip, delay_prob=delay, max_delay=max_delay)
    lines, truth = generate(cfg)
    a = Analysis(lines)
    compare_truth(truth, a)
    assert all(len(r) == 1 for r, _, _ in a.invalid)
    assert truth["unique_users_total"] <= users


def test_rate_below_one_and_user_pool():
    lines, truth = generate(GenConfig(count=100, rate=0.5, users=7, seed=2))
    a = Analysis(lines)
    tss = [t for _, t, _, _ in a.ok]
    assert tss == [1468244384 + 2 * i for i in range(100)]
    assert truth["unique_users_total"] == len({u for _, _, u, _ in a.ok}) == 7
    other = Analysis(generate(GenConfig(count=100, rate=0.5, users=7, seed=3))[0])
    assert {u for _, _, u, _ in a.ok}.isdisjoint({u for _, _, u, _ in other.ok})


def test_empty():
    lines, truth = generate(GenConfig(count=0))
    assert lines == [] and truth["frames"] == 0 and truth["minutes"] == []
    assert truth["ts_min"] is None and truth["ts_max"] is None


def test_validate_rejects():
    for bad in (dict(count=-1), dict(rate=0), dict(rate=-1.0), dict(users=0),
                dict(string_ts_frac=1.5), dict(delay_prob=-0.1),
                dict(malformed_frac=0.6, bitflip_frac=0.6), dict(max_delay=-1),
                dict(bitflip_min_bit=31, bitflip_max_bit=30), dict(rate=float("nan")),
                dict(bitflip_max_bit=40)):
        with pytest.raises(ValueError):
            validate(GenConfig(**bad))
        with pytest.raises(ValueError):
            generate(GenConfig(**bad))


# ----------------------------------------------------------------- determinism, I/O
def test_determinism():
    cfg = GenConfig(count=3000, seed=11, malformed_frac=0.1, bitflip_frac=0.05,
                    string_ts_frac=0.1, delay_prob=0.2, max_delay=5, rate=50)
    a1, t1 = generate(cfg)
    a2, t2 = generate(cfg)
    assert a1 == a2 and t1 == t2
    b1, _ = generate(dataclasses.replace(cfg, seed=12))
    assert b1 != a1
    assert len(set(b1) & set(a1)) < 10


def test_write_gz_and_plain(tmp_path):
    cfg = GenConfig(count=9000, seed=4, malformed_frac=0.05, delay_prob=0.1, max_delay=3)
    lines, truth = generate(cfg)
    p1, p2, p3 = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl"
    t1 = write(cfg, str(p1), str(tmp_path / "t.json"), progress=False)
    write(cfg, str(p2), progress=False)
    write(cfg, str(p3), progress=False)
    assert t1 == truth == json.loads((tmp_path / "t.json").read_text())
    assert p1.read_bytes() == p2.read_bytes()  # byte-identical gzip
    with gzip.open(p1, "rb") as f:  # several gzip members, read as one stream
        assert f.read().split(b"\n") == lines + [b""]
    assert p3.read_bytes() == b"\n".join(lines) + b"\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_write_empty_gz(tmp_path):
    p = tmp_path / "e.jsonl.gz"
    write(GenConfig(count=0), str(p), progress=False)
    with gzip.open(p, "rb") as f:
        assert f.read() == b""


# ----------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.generator", *args],
                          cwd=ROOT, capture_output=True, timeout=60)


def test_cli_gz_and_stdout(tmp_path):
    opts = ["--count", "500", "--seed", "9", "--rate", "20", "--users", "50",
            "--malformed-frac", "0.1", "--bitflip-frac", "0.02", "--string-ts-frac",
            "0.2", "--delay-prob", "0.1", "--max-delay", "4"]
    cfg = GenConfig(count=500, seed=9, rate=20, users=50, malformed_frac=0.1,
                    bitflip_frac=0.02, string_ts_frac=0.2, delay_prob=0.1, max_delay=4)
    lines, truth = generate(cfg)
    out, tr = tmp_path / "sub" / "s.jsonl.gz", tmp_path / "t.json"
    p = _cli(*opts, "--out", str(out), "--truth", str(tr))
    assert p.returncode == 0, p.stderr
    assert b"wrote 500 frames" in p.stderr
    with gzip.open(out, "rb") as f:
        assert f.read() == b"\n".join(lines) + b"\n"
    assert json.loads(tr.read_text()) == truth
    p = _cli(*opts, "--out", "-", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"\n".join(lines) + b"\n"


def test_cli_help():
    p = _cli("--help")
    assert p.returncode == 0
    for flag in (b"--count", b"--string-ts-frac", b"--bitflip-min-bit", b"--truth"):
        assert flag in p.stdout


@pytest.mark.parametrize("args,word", [
    (["--count", "-1"], b"count"),
    (["--string-ts-frac", "1.5"], b"string_ts_frac"),
    (["--malformed-frac", "0.6", "--bitflip-frac", "0.6"], b"<= 1"),
    (["--rate", "0"], b"rate"),
    (["--users", "0"], b"users"),
    (["--count", "abc"], b"--count"),
])
def test_cli_bad_args(args, word, tmp_path):
    out = tmp_path / "x.jsonl"
    p = _cli(*args, "--out", str(out))
    assert p.returncode == 2
    assert word in p.stderr, p.stderr
    assert not out.exists()
