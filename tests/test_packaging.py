"""The package as an artifact: the wheel built from pyproject.toml, its schema files read
through importlib.resources, executors importing it from the shipped zip; and the plain
form `spark-submit jobs/<job>.py` from the activated virtualenv."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, new_topic, produce
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

VENV_BIN = ROOT / ".venv" / "bin"
INVALID_TS = b'{"ts":"not a number","uid":"u-1"}'


def _build(repo: Path = ROOT) -> tuple[Path, str]:
    """``<repo>/spark-submit.sh --build-wheel``: (wheel path, its stderr)."""
    r = subprocess.run([str(repo / "spark-submit.sh"), "--build-wheel"], cwd=repo, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip()), r.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_of_sources(tmp: Path) -> Path:
    """A minimal clone: the script, pyproject.toml, the package; the shared virtualenv."""
    repo = tmp / "repo"
    repo.mkdir()
    shutil.copy2(ROOT / "spark-submit.sh", repo)
    shutil.copy2(ROOT / "pyproject.toml", repo)
    shutil.copytree(ROOT / "doodlestats", repo / "doodlestats", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".venv").symlink_to(ROOT / ".venv")
    return repo


# --- the artifact ------------------------------------------------------------------------

def test_wheel_holds_the_package_and_its_schemas_and_is_rebuilt_only_on_change(tmp_path):
    repo = _copy_of_sources(tmp_path)
    whl, err = _build(repo)
    assert "built doodlestats-" in err
    assert whl.parent.parent == repo / ".deps" / "dist" and whl.name.endswith("-py3-none-any.whl")
    shipped = whl.parent / "doodlestats.zip"  # the name Spark adds to executors' sys.path
    assert shipped.read_bytes() == whl.read_bytes()
    names = set(zipfile.ZipFile(whl).namelist())
    sources = {f"doodlestats/{p.name}" for p in (ROOT / "doodlestats").glob("*.py")}
    assert sources <= names
    assert {"doodlestats/schemas/frame.schema.json", "doodlestats/schemas/minute_stats.schema.json"} <= names
    assert all(n.startswith(("doodlestats/", "doodlestats-")) for n in names), names  # no tests/, tools/, jobs/
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert re.search(r"^Requires-Dist: pyspark<4\.1,>=4\.0\.2$", meta, re.M)
    assert "Provides-Extra: dev" in meta and "Provides-Extra: bench" in meta

    mtime = whl.stat().st_mtime_ns
    again, err = _build(repo)
    assert again == whl and whl.stat().st_mtime_ns == mtime and "built" not in err  # unchanged: no rebuild

    with open(repo / "doodlestats" / "batch" / "reasons.py", "a") as f:
        f.write("\nCHANGED = True\n")
    changed, err = _build(repo)
    assert "built doodlestats-" in err and changed != whl
    assert b"CHANGED = True" in zipfile.ZipFile(changed).read("doodlestats/batch/reasons.py")
    assert whl.exists()  # a job still running on the old artifact keeps its files


def test_schemas_are_package_data_and_the_top_level_folder_links_to_them():
    assert (ROOT / "schemas").is_symlink() and os.readlink(ROOT / "schemas") == "doodlestats/schemas"
    from importlib.resources import files
    pkg = files("doodlestats") / "schemas"
    assert {"frame.schema.json", "minute_stats.schema.json"} <= {p.name for p in pkg.iterdir()}
    from doodlestats.batch.reference import load_schema
    assert load_schema()["properties"]["ts"] and load_schema("minute_stats.schema.json")["properties"]


def test_reference_parser_reads_its_schema_from_inside_the_zip(tmp_path):
    """The python parser's oracle needs frame.schema.json; inside a zip a path built from
    __file__ is no directory (NotADirectoryError) — importlib.resources reads the member."""
    whl, _ = _build()
    code = ("import doodlestats, doodlestats.batch.reference as r, json; "
            "print(json.dumps([doodlestats.__file__, r.reference_parse(%r)]))" % INVALID_TS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOODLE_HOME")}
    r = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(whl.parent / "doodlestats.zip")})
    assert r.returncode == 0, r.stderr
    where, parsed = json.loads(r.stdout)
    assert where.startswith(str(whl.parent / "doodlestats.zip") + os.sep)
    assert parsed == [None, "u-1", "bad_ts"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (version,) = [s.version for s in req.specifier if s.operator == "=="]
            pins[canonicalize_name(req.name)] = version
    return pins


def _declared() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"runtime": [Requirement(r) for r in project["dependencies"]]}
    for extra, reqs in project["optional-dependencies"].items():
        out[extra] = [Requirement(r) for r in reqs]
    return out


def test_pyproject_ranges_include_the_pinned_versions():
    pins, declared = _pins(), _declared()
    assert set(declared) == {"runtime", "dev", "bench", "notebook"}
    for group, reqs in declared.items():
        for req in reqs:
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} ({group}) is not pinned in requirements.txt"
            assert req.specifier.contains(pins[name], prereleases=True), \
                f"{req} ({group}) excludes the pinned {name}=={pins[name]}"


def _closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require (installed metadata, all extras)."""
    seen, todo = set(), list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r).name for r in (md.requires(name) or [])]
        except md.PackageNotFoundError:
            pass
    return seen


def _third_party_imports(paths: list[Path]) -> dict[str, str]:
    """top-level module -> first file importing it, for modules outside the stdlib and the repo."""
    local = {"doodlestats", "tools", "bench", "jobs"} | {p.stem for p in paths}  # tests import each other
    out: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def test_every_third_party_import_is_declared():
    """doodlestats/ needs only [project] dependencies (the wheel brings nothing else);
    tools/, tests/, jobs/ may use `dev`, bench/ also `bench`."""
    declared = {g: {canonicalize_name(r.name) for r in reqs} for g, reqs in _declared().items()}
    dists = md.packages_distributions()
    groups = {
        "runtime": (["doodlestats"], declared["runtime"]),
        "dev": (["tools", "tests", "jobs"], declared["runtime"] | declared["dev"]),
        "bench": (["bench"], declared["runtime"] | declared["dev"] | declared["bench"]),
    }
    for group, (folders, names) in groups.items():
        allowed = _closure(names)
        files = [p for f in folders for p in (ROOT / f).rglob("*.py")]
        for module, where in _third_party_imports(files).items():
            providers = {canonicalize_name(d) for d in dists.get(module, [])}
            assert providers, f"{where} imports {module!r}, which no installed distribution provides"
            assert providers & allowed, (f"{where} imports {module!r} ({', '.join(sorted(providers))}): "
                                         f"add it to pyproject.toml ({group})")


# --- executors import the package from the artifact -------------------------------------------

PROBE = '''
import hashlib, json, sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
import doodlestats
from doodlestats.batch.parse import parse_frames

def origin():
    import doodlestats, doodlestats.batch.reference, hashlib, os
    archive = getattr(doodlestats.__loader__, "archive", None)  # zipimport: the zip's path
    return {"file": doodlestats.__file__, "reference": doodlestats.batch.reference.__file__,
            "sha256": hashlib.sha256(open(archive, "rb").read()).hexdigest() if archive else None,
            "pid": os.getpid()}

def on_executor(_rows):
    yield json.dumps(origin())

frames = [(%(invalid)r,), (b'{"uid":"u-2","ts":1468244384}',), (b'{"uid":"u-3"}',), (b"[1]",)]
df = spark.createDataFrame(frames, "value binary").repartition(2)
parsed = sorted((r.uid or "", r.ts, r.reason) for r in parse_frames(df, "python").collect())
executors = [json.loads(s) for s in spark.sparkContext.parallelize(range(4), 4).mapPartitions(on_executor).collect()]
print(json.dumps({"driver": origin(), "parsed": parsed, "executors": executors, "pid": __import__("os").getpid()}))
spark.stop()
'''


@pytest.mark.integration
def test_executors_import_the_package_from_the_shipped_wheel(tmp_path):
    """./spark-submit.sh ships the wheel; Python code on the executors (the python parser in
    mapInArrow, a probe in mapPartitions) imports doodlestats from it — run from a folder
    without the sources, so nothing else could provide the package there."""
    whl, _ = _build()
    (tmp_path / "probe.py").write_text(PROBE % {"invalid": INVALID_TS})
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", "probe.py"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["parsed"] == [["", None, "malformed_json"], ["u-1", None, "bad_ts"],
                             ["u-2", 1468244384, None], ["u-3", None, "missing_ts"]]
    wheel_sha = _sha(whl)
    executors = out["executors"]
    assert {e["pid"] for e in executors}.isdisjoint({out["pid"]})  # Python workers, not the driver
    for where in [out["driver"], *executors]:
        assert re.search(r"doodlestats\.zip/doodlestats/__init__\.py$", where["file"]), where
        assert where["reference"].startswith(where["file"].rsplit("/", 1)[0]), where
        assert where["sha256"] == wheel_sha, where  # the very artifact built from pyproject


# --- the driver's class archive (make setup: tools/class_archive.py) -----------------------

SESSION_PROBE = """
from doodlestats.runtime.config import load_config
from doodlestats.runtime.session import get_spark
spark = get_spark("probe", load_config())
print(spark.range(10).count())
spark.stop()
"""


def _class_sources(tmp: Path, archive: str) -> tuple[dict[str, str], str]:
    """Run a session through ./spark-submit.sh (``DOODLE_CLASS_ARCHIVE=archive``) with the
    JVM's class loading logged: {class: where it came from}, and the job's stderr."""
    (tmp / "probe.py").write_text(SESSION_PROBE)
    log = tmp / f"classes-{archive}.log"
    env = {**os.environ, "DOODLE_CLASS_ARCHIVE": archive, "SPARK_SUBMIT_OPTS": f"-Xlog:class+load=info:file={log}"}
    r = subprocess.run([str(ROOT / "spark-submit.sh"), "--driver-memory", "1g", str(tmp / "probe.py")], cwd=tmp,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "10", r.stderr[-3000:]
    found = re.findall(r"\] (\S+) source: (.*)$", log.read_text(), re.M)
    return dict(found), r.stderr


@pytest.mark.integration
def test_the_driver_maps_its_classes_from_the_archive_make_setup_wrote(tmp_path):
    """With the archive, Spark's classes and Delta's (loaded from --jars by Spark's own class
    loader) come from it; without it (DOODLE_CLASS_ARCHIVE=off) from the jars."""
    archive = subprocess.run([str(ROOT / "spark-submit.sh"), "--class-archive"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert Path(archive).is_file(), f"no class archive at {archive}: run `make setup` (python -m tools.class_archive)"
    shared, err = _class_sources(tmp_path, "on")
    assert "Unable to use shared archive" not in err, err[-2000:]
    top = "shared objects file (top)"
    assert sum(src == top for src in shared.values()) > 5000, f"{len(shared)} classes, few from the archive"
    for cls in ("org.apache.spark.SparkContext", "io.delta.sql.DeltaSparkSessionExtension"):
        assert shared.get(cls) == top, (cls, shared.get(cls))
    plain, _ = _class_sources(tmp_path, "off")
    assert plain["org.apache.spark.SparkContext"].endswith(".jar"), plain["org.apache.spark.SparkContext"]
    assert not any("(top)" in src for src in plain.values())


# --- the plain form: `spark-submit jobs/<job>.py` from the activated virtualenv ----------------

def _activated_env(**extra: str) -> dict[str, str]:
    """The environment of a shell that ran `source .venv/bin/activate` (nothing of ours set)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPARK_", "PYSPARK_", "DOODLE_")) and k != "PYTHONPATH"}
    env.update(VIRTUAL_ENV=str(ROOT / ".venv"), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def _plain(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["spark-submit", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env or _activated_env())


def _no_stack_trace(text: str) -> None:
    for bad in ("Traceback", "Exception in thread", "\tat ", "Exception:"):
        assert bad not in text, f"{bad!r} in output:\n{text[-3000:]}"


@pytest.mark.integration
def test_plain_spark_submit_help():
    assert (ROOT / "conf" / "spark" / "spark-defaults.conf").exists(), "run `make setup`"
    r = _plain(["jobs/minute_stats.py", "--help"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: jobs/minute_stats.py") and "--available-now" in r.stdout
    _no_stack_trace(r.stdout + r.stderr)


@pytest.mark.integration
def test_plain_spark_submit_reads_kafka_writes_and_reads_delta(kafka, test_conf, tmp_path):
    from tools.generator import GenConfig, generate
    lines, truth = generate(GenConfig(count=2000, rate=20, users=200, seed=11, malformed_frac=0.02))
    topic = new_topic(kafka, "plain")
    produce(kafka, topic, lines)
    out = tmp_path / "fc"
    r = _plain(["jobs/frame_counts.py", "--conf-file", str(test_conf), "--topic", topic, "--delta-path", str(out)])
    assert r.returncode == 0, r.stderr[-4000:]
    got = {d["minute"]: d["frames"] for d in map(json.loads, r.stdout.splitlines())}
    assert got == {m["minute"]: m["frames"] for m in truth["minutes"]}
    assert (out / "_delta_log").is_dir()


def _one_error_line(r: subprocess.CompletedProcess, prog: str) -> str:
    assert r.returncode != 0
    text = r.stdout + r.stderr
    _no_stack_trace(text)
    errors = [line for line in text.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


@pytest.mark.integration
def test_plain_spark_submit_without_the_jars_says_what_to_run(tmp_path):
    """A Spark that does not know the jars (here: a configuration folder of its own)."""
    (tmp_path / "conf").mkdir()
    r = _plain(["jobs/frame_counts.py", "--delta-path", str(tmp_path / "fc")],
               env=_activated_env(SPARK_CONF_DIR=str(tmp_path / "conf")), timeout=180)
    line = _one_error_line(r, "frame_counts")
    assert "Spark's Kafka connector and Delta Lake are not on the classpath" in line
    assert line.endswith(f"run `./spark-submit.sh jobs/frame_counts.py --delta-path {tmp_path / 'fc'}`")


@pytest.mark.integration
def test_plain_spark_submit_before_make_setup_says_make_setup(tmp_path):
    """A clone whose jars were never fetched (DOODLE_HOME: the project folder)."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "conf", clone / "conf", ignore=shutil.ignore_patterns("spark-defaults.conf"))
    shutil.copy2(ROOT / "conf" / "spark-defaults.conf", clone / "conf")
    (tmp_path / "sparkconf").mkdir()
    r = _plain(["jobs/frame_counts.py", "--delta-path", str(tmp_path / "fc")],
               env=_activated_env(SPARK_CONF_DIR=str(tmp_path / "sparkconf"), DOODLE_HOME=str(clone)),
               timeout=180)
    assert _one_error_line(r, "frame_counts").endswith("run `make setup`")


@pytest.mark.integration
def test_plain_minute_stats_without_the_jars_says_what_to_run(kafka, test_conf, tmp_path):
    if "require_connectors" not in (ROOT / "jobs" / "minute_stats.py").read_text():
        pytest.skip("jobs/minute_stats.py does not call doodlestats.runtime.session.require_connectors yet")
    (tmp_path / "conf").mkdir()
    r = _plain(["jobs/minute_stats.py", "--conf-file", str(test_conf), "--available-now",
                "--checkpoint", str(tmp_path / "cp"), "--delta-path", str(tmp_path / "delta")],
               env=_activated_env(SPARK_CONF_DIR=str(tmp_path / "conf")), timeout=180)
    assert "./spark-submit.sh jobs/minute_stats.py" in _one_error_line(r, "minute_stats")
