"""HyperLogLog sketches of approx mode, built in the driver with Apache DataSketches.

Spark's ``hll_sketch_agg`` / ``hll_union_agg`` / ``hll_sketch_estimate`` are the same
library (DataSketches HLL, Java): a sketch serialised here is read by Spark and vice
versa — same hash (MurmurHash3 of the UTF-8 bytes, seed 9001), same ``HLL_8`` layout
(a test checks that Spark's estimate of a sketch built here equals the estimate of
Spark's own). Building them here saves a Spark job per micro-batch: the uids are already
in the driver as Arrow.
"""

from __future__ import annotations

import pyarrow as pa
from datasketches import hll_sketch, hll_union, tgt_hll_type

__all__ = ["TYPE", "build", "union", "estimate"]

TYPE = tgt_hll_type.HLL_8  # what Spark's hll_sketch_agg and hll_union_agg produce


def build(uids: pa.Array, lg_k: int) -> bytes:
    """Serialized sketch of the given uids (nulls and empty strings are ignored)."""
    sk = hll_sketch(lg_k, TYPE)
    update = sk.update
    for u in uids.to_pylist():
        if u:
            update(u)
    return bytes(sk.serialize_updatable())


def union(sketches: list[bytes], lg_k: int) -> tuple[bytes, int]:
    """(serialized union, rounded estimate) of serialized sketches; lg_k is the largest kept."""
    u = hll_union(lg_k)
    for s in sketches:
        u.update(hll_sketch.deserialize(s))
    result = u.get_result(TYPE)
    return bytes(result.serialize_updatable()), int(round(result.get_estimate()))


def estimate(sketch: bytes) -> int:
    """The rounded distinct count of a serialized sketch."""
    return int(round(hll_sketch.deserialize(sketch).get_estimate()))
