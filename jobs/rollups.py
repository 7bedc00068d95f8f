"""Rollups: unique users per UTC hour, day, ISO week, month or year, from the minute tables.

A true union of each period's users (exact: ``minute_uids``; approx: the minutes' HLL
sketches), written into ``rollup_<grain>`` Delta tables below the Delta root; the logic
is :mod:`doodlestats.history.rollups`, the periods :mod:`doodlestats.history.periods`.

    ./spark-submit.sh jobs/rollups.py --grain day --print
    ./spark-submit.sh jobs/rollups.py --grain all
    ./spark-submit.sh jobs/rollups.py --grain day --output-topic dayStats
    ./spark-submit.sh jobs/rollups.py --help

Exit status: 0 done, 1 a rollup or its publishing failed, 2 bad arguments or nothing to read.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import _bootstrap  # noqa: F401 - doodlestats importable from a clone

from doodlestats.batch.results import MODES, iso
from doodlestats.history.periods import GRAINS, parse_time
from doodlestats.io.kafka import KafkaUnavailable, check_kafka, client_settings, ensure_topic
from doodlestats.io.publish import KafkaPublisher, PublishError
from doodlestats.io.storage import configure_spark, delta_storage_options
from doodlestats.io.uris import StorageError, join, to_delta_uri
from doodlestats.runtime import cli
from doodlestats.runtime.config import ConfigError, load_config
from doodlestats.runtime.logs import logger

# Spark, delta-rs and the modules that import them (the rollup engine, the tables, the
# session) are imported in the functions that use them: --help and argument errors stay
# fast and need no Spark.
if TYPE_CHECKING:
    from doodlestats.history.rollups import RollupResult

PROG = "rollups"
_log = logger(PROG)
_USAGE_EXAMPLES = """\
examples:
  ./spark-submit.sh jobs/rollups.py --grain day --print
  ./spark-submit.sh jobs/rollups.py --grain all                          # hour, day, week, month, year
  ./spark-submit.sh jobs/rollups.py --grain week --mode approx --from 2016-07-01 --to 2016-08-01 --print
  ./spark-submit.sh jobs/rollups.py --grain day --output-topic dayStats  # publish (key = period_start)
  ./spark-submit.sh jobs/rollups.py --grain hour --full                  # recompute every period

Periods are UTC; weeks are ISO weeks (Monday 00:00 UTC). --from/--to select the whole
periods overlapping [FROM, TO). Without --full only the periods whose minutes changed
since the last run are recomputed (the first run computes all). --print and
--output-topic emit the periods this run recomputed (absolute values), one JSON
object per line / message (schema: schemas/rollup.schema.json).
"""


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(
        prog="jobs/rollups.py", epilog=_USAGE_EXAMPLES,
        description="Unique users per UTC hour, day, ISO week, month or year, rolled up from the minute tables "
                    "in Delta (a true union of users, never a sum), into rollup_<grain> tables below the Delta root.")
    ap.add_argument("--grain", default="day", metavar="GRAIN[,GRAIN...]",
                    help=f"{' | '.join(GRAINS)} | all, or a comma-separated list (default: day)")
    ap.add_argument("--from", dest="from_", metavar="WHEN",
                    help="first instant: ISO-8601 date or date-time (UTC unless an offset is given) or epoch seconds")
    ap.add_argument("--to", metavar="WHEN", help="end instant (exclusive), same forms as --from")
    ap.add_argument("--mode", choices=MODES, help="exact (minute_uids) or approx (HLL sketches) ([job] mode)")
    ap.add_argument("--rsd", type=float,
                    help="approx: precision of sketches built for minutes that have none ([job] rsd)")
    ap.add_argument("--full", action="store_true", help="recompute every period in range, not only changed ones")
    ap.add_argument("--delta-path", help="root of the Delta tables ([paths] delta); a path or a URI")
    ap.add_argument("--conf-file", help="configuration file (default conf/doodle.toml)")
    ap.add_argument("--print", action="store_true",
                    help="write the recomputed periods to stdout, one JSON object per line")
    ap.add_argument("--output-topic", metavar="TOPIC",
                    help="also publish the recomputed periods to this Kafka topic (e.g. dayStats)")
    ap.add_argument("--bootstrap-servers", help="Kafka bootstrap servers ([kafka] bootstrap_servers)")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    names = [g.strip() for g in args.grain.split(",") if g.strip()]
    if names == ["all"]:
        names = list(GRAINS)
    bad = [g for g in names if g not in GRAINS]
    if not names or bad:
        ap.error(f"argument --grain: invalid choice {(bad or [args.grain])[0]!r} "
                 f"(choose from {', '.join(GRAINS)}, all)")
    args.grains = [g for g in GRAINS if g in names]
    for flag, attr in (("--from", "from_"), ("--to", "to")):
        v = getattr(args, attr)
        if v is not None:
            try:
                setattr(args, attr, parse_time(v))
            except ValueError as e:
                ap.error(f"argument {flag}: {e}")
    if args.from_ is not None and args.to is not None and args.from_ >= args.to:
        ap.error(f"--from ({iso(args.from_)}) must be before --to ({iso(args.to)})")
    if args.output_topic is not None and not args.output_topic.strip():
        ap.error("argument --output-topic: empty topic name")
    if args.output_topic and len(args.grains) > 1:
        ap.error("--output-topic takes one --grain (the message key is period_start, which grains share)")
    return args


def open_delta(args):
    """(config, Delta root, storage options) — a one-line error unless ``minute_stats`` is there."""
    from deltalake import DeltaTable

    from doodlestats.io.tables import MINUTE_STATS, Tables
    try:
        cfg = load_config(args.conf_file, {"job.mode": args.mode, "job.rsd": args.rsd, "paths.delta": args.delta_path,
                                           "kafka.bootstrap_servers": args.bootstrap_servers})
        delta = str(cfg.path("delta"))
        opts = delta_storage_options(delta, cfg)
    except (ConfigError, StorageError) as e:
        raise cli.JobError(str(e)) from None
    try:
        found = DeltaTable.is_deltatable(to_delta_uri(join(Tables(delta, PROG).root, MINUTE_STATS)),
                                         storage_options=opts or None)
    except Exception as e:  # noqa: BLE001 - unreachable store, bad URI: one line
        raise cli.JobError(f"cannot read {delta}: {cli.first_line(e)}") from None
    if not found:
        raise cli.JobError(f"no minute_stats table below {delta} — run jobs/minute_stats.py first, "
                           "or pass --delta-path")
    return cfg, delta, opts


def emitter(args, cfg):
    """The function that prints and/or publishes each grain's recomputed periods."""
    publisher = None
    if args.output_topic:
        try:
            check_kafka(cfg, need_input=False)
            ensure_topic(cfg, args.output_topic, 1)
        except KafkaUnavailable as e:
            raise cli.JobError(str(e)) from None
        publisher = KafkaPublisher(cfg.kafka.bootstrap_servers, args.output_topic, client_settings(cfg))

    def emit(results: list[RollupResult]) -> None:
        if args.print:
            sys.stdout.write("".join(r.to_bytes().decode() + "\n" for r in results))
            sys.stdout.flush()
        if publisher is not None:
            publisher.publish((r.key.encode(), r.to_bytes()) for r in results)
    return emit


def run(args, cfg, delta: str, opts: dict, emit) -> None:
    """Every grain asked for, in one Spark session."""
    from doodlestats.history.rollups import RollupError, Rollups
    from doodlestats.runtime.session import get_spark, require_connectors
    require_connectors(kafka=False, prog=PROG)
    spark = get_spark(PROG, cfg)
    try:
        configure_spark(spark, cfg, outputs=[delta])
        roll = Rollups(spark, delta, opts, rsd=cfg.job.rsd)
        rng = "" if args.from_ is None and args.to is None else \
            f" | range [{iso(args.from_) if args.from_ is not None else '-'}, " \
            f"{iso(args.to) if args.to is not None else '-'})"
        _log.info(f"{PROG}: {', '.join(args.grains)} from {delta} | mode {cfg.job.mode}{rng}"
                  f"{' | full' if args.full else ''}")
        reports = [roll.run(g, cfg.job.mode, args.from_, args.to, args.full, emit=emit) for g in args.grains]
        _log.info(f"{PROG}: done — {sum(len(r.recomputed) for r in reports):,} period(s) recomputed, "
                  f"{sum(r.skipped for r in reports):,} skipped in {sum(r.seconds for r in reports):.1f}s")
    except (RollupError, PublishError) as e:
        raise cli.JobError(str(e), cli.FAILED) from None
    finally:
        spark.stop()


def body(args) -> int:
    cfg, delta, opts = open_delta(args)
    run(args, cfg, delta, opts, emitter(args, cfg))
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, parse_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
