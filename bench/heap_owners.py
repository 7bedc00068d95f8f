"""Who holds the memory of a JVM heap dump: objects of a class grouped by their chain of
referrers, and byte arrays grouped by the classes that hold them.

    jcmd <driver JVM pid> GC.heap_dump driver.hprof          # ~1 s for an 800 MB heap
    python -m bench.heap_owners driver.hprof --class org.apache.spark.sql.classic.SparkSession
    python -m bench.heap_owners driver.hprof --bytes          # byte[] by 3 referrer levels
    python -m bench.heap_owners driver.hprof --class 'java.util.concurrent.ConcurrentHashMap$Node' \\
        --through '[Ljava.util.concurrent.ConcurrentHashMap$Node;'     # the maps that own the nodes

How the soak's causes were found (docs/operations.md, "Soak"): the live SparkSessions of Spark 4.0.1
(``ArtifactManager`` ← ``CleanerImpl$PhantomCleanableRef``), the Kafka records of Spark's
fetched-data cache (``ConsumerRecord`` ← ``ArrayList``), the broadcast tables of the
anti-join (``UnsafeHashedRelation`` ← ``MemoryStore``).

The reader handles HPROF 1.0.2 with 8-byte identifiers (64-bit JVMs). A chain follows one
referrer per step (the first one found), so it is *a* path towards a GC root, not
necessarily the dominating one — enough to name an owner. Minutes for an 800 MB dump (the
graph is built in numpy; the grouping walks objects one by one in Python).
"""

from __future__ import annotations

import argparse
import mmap
import struct
import sys
from array import array

SIZES = {2: 8, 4: 1, 5: 2, 6: 4, 7: 8, 8: 1, 9: 2, 10: 4, 11: 8}
PRIM = {4: "boolean[]", 5: "char[]", 6: "float[]", 7: "double[]", 8: "byte[]", 9: "short[]", 10: "int[]",
        11: "long[]"}
ROOT_SIZES = {0xFF: 8, 0x05: 8, 0x07: 8, 0x01: 16, 0x02: 16, 0x03: 16, 0x08: 16, 0x04: 12, 0x06: 12}


class Heap:
    """The object graph of a dump: every object's class, every reference (numpy arrays)."""

    def __init__(self, path: str):
        import numpy as np
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        p = m.find(b"\0") + 1
        if struct.unpack_from(">I", m, p)[0] != 8:
            raise SystemExit("heap_owners: only dumps with 8-byte identifiers are supported")
        p += 12
        strings: dict[int, str] = {}
        self.names: dict[int, str] = {}          # class object id -> class name
        classes: dict[int, tuple[int, list]] = {}
        src, dst, ids, cls = array("Q"), array("Q"), array("Q"), array("Q")
        self.prim: dict[int, tuple[str, int]] = {}   # array id -> (type, bytes)
        instances = []
        while p < len(m):
            tag, ln = m[p], struct.unpack_from(">I", m, p + 5)[0]
            body, p = p + 9, p + 9 + ln
            if tag == 0x01:
                strings[struct.unpack_from(">Q", m, body)[0]] = m[body + 8:body + ln].decode("utf-8", "replace")
            elif tag == 0x02:
                _, cid, _, nid = struct.unpack_from(">IQIQ", m, body)
                self.names[cid] = strings.get(nid, "?").replace("/", ".")
            elif tag in (0x0C, 0x1C):
                q, end = body, body + ln
                while q < end:
                    st = m[q]
                    q += 1
                    if st in ROOT_SIZES:
                        q += ROOT_SIZES[st]
                    elif st == 0x20:                       # class dump
                        cid, _, sup = struct.unpack_from(">QIQ", m, q)
                        q += 8 + 4 + 8 * 6 + 4
                        ncp = struct.unpack_from(">H", m, q)[0]
                        q += 2
                        for _ in range(ncp):               # constant pool: u2 index, u1 type, value
                            q += 3 + SIZES[m[q + 2]]
                        ns = struct.unpack_from(">H", m, q)[0]
                        q += 2
                        for _ in range(ns):                # statics: references count as edges
                            t = m[q + 8]
                            if t == 2:
                                v = struct.unpack_from(">Q", m, q + 9)[0]
                                if v:
                                    src.append(cid)
                                    dst.append(v)
                            q += 9 + SIZES[t]
                        nf = struct.unpack_from(">H", m, q)[0]
                        q += 2
                        fields = []
                        for _ in range(nf):
                            fields.append(m[q + 8])
                            q += 9
                        classes[cid] = (sup, fields)
                    elif st == 0x21:                       # instance
                        oid, _, cid, n = struct.unpack_from(">QIQI", m, q)
                        instances.append((oid, cid, q + 24))
                        q += 24 + n
                    elif st == 0x22:                       # object array
                        oid, _, n, acid = struct.unpack_from(">QIIQ", m, q)
                        q += 24
                        ids.append(oid)
                        cls.append(acid)
                        if n:
                            vals = np.frombuffer(m, dtype=">u8", count=n, offset=q)
                            nz = vals[vals != 0].astype(np.uint64)
                            src.extend(array("Q", [oid]) * len(nz))
                            dst.frombytes(nz.tobytes())
                        q += 8 * n
                    elif st == 0x23:                       # primitive array
                        oid, _, n, t = struct.unpack_from(">QIIB", m, q)
                        self.prim[oid] = (PRIM[t], n * SIZES[t])
                        q += 17 + n * SIZES[t]
                    else:
                        raise SystemExit(f"heap_owners: unknown heap record {st:#x}")
        offsets: dict[int, list[int]] = {}

        def refs(cid: int) -> list[int]:           # reference field offsets, own fields first
            if cid not in offsets:
                out, o, c = [], 0, cid
                while c in classes:
                    for t in classes[c][1]:
                        if t == 2:
                            out.append(o)
                        o += SIZES[t]
                    c = classes[c][0]
                offsets[cid] = out
            return offsets[cid]

        for oid, cid, q in instances:
            ids.append(oid)
            cls.append(cid)
            for o in refs(cid):
                v = struct.unpack_from(">Q", m, q + o)[0]
                if v:
                    src.append(oid)
                    dst.append(v)
        S, D = np.frombuffer(src, dtype=np.uint64), np.frombuffer(dst, dtype=np.uint64)
        order = np.argsort(D, kind="stable")
        self.ref_to, first = np.unique(D[order], return_index=True)
        self.ref_from = S[order][first]            # one referrer per referenced object
        ids_, cls_ = np.frombuffer(ids, dtype=np.uint64), np.frombuffer(cls, dtype=np.uint64)
        o = np.argsort(ids_)
        self.ids, self.cls = ids_[o], cls_[o]
        self.np = np

    def class_of(self, oid: int) -> str:
        if oid in self.prim:
            return self.prim[oid][0]
        i = int(self.np.searchsorted(self.ids, oid))
        if i < len(self.ids) and self.ids[i] == oid:
            return self.names.get(int(self.cls[i]), "?")
        return f"class {self.names[oid]}" if oid in self.names else "?"

    def referrer(self, oid: int) -> int:
        i = int(self.np.searchsorted(self.ref_to, oid))
        return int(self.ref_from[i]) if i < len(self.ref_to) and self.ref_to[i] == oid else 0

    def chain(self, oid: int, depth: int) -> str:
        out, seen = [], {oid}
        for _ in range(depth):
            oid = self.referrer(oid)
            if not oid or oid in seen:
                break
            seen.add(oid)
            out.append(self.class_of(oid))
        return " <- ".join(out) or "(a GC root)"

    def of_class(self, name: str) -> list[int]:
        cids = {c for c, n in self.names.items() if n == name}
        return [int(i) for i, c in zip(self.ids, self.cls) if int(c) in cids]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.heap_owners", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", help="an HPROF file (jcmd PID GC.heap_dump FILE)")
    ap.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                    help="group this class's objects by their referrer chain (repeatable)")
    ap.add_argument("--through", action="append", default=[], metavar="NAME",
                    help="classes to walk through before the chain starts (a map's nodes and tables)")
    ap.add_argument("--bytes", action="store_true", help="byte[] by the classes of 3 referrer levels")
    ap.add_argument("--depth", type=int, default=10, help="referrer steps per chain (default 10)")
    ap.add_argument("--top", type=int, default=12, help="groups to print (default 12)")
    args = ap.parse_args(argv)
    if not args.classes and not args.bytes:
        ap.error("nothing to do: give --class NAME and/or --bytes")
    h = Heap(args.dump)
    through = set(args.through)
    for name in args.classes:
        objs = h.of_class(name)
        groups: dict[str, int] = {}
        for oid in objs:
            start = oid
            while (r := h.referrer(start)) and h.class_of(r) in through | {name}:
                start = r
            key = h.chain(start, args.depth)
            groups[key] = groups.get(key, 0) + 1
        print(f"== {name}: {len(objs):,} objects")
        for key, n in sorted(groups.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {n:8,d} x <- {key}")
    if args.bytes:
        agg: dict[tuple, list[int]] = {}
        for oid, (t, size) in h.prim.items():
            if t != "byte[]":
                continue
            a = h.referrer(oid)
            b = h.referrer(a) if a else 0
            c = h.referrer(b) if b else 0
            k = tuple(h.class_of(x) if x else "-" for x in (a, b, c))
            x = agg.setdefault(k, [0, 0])
            x[0] += size
            x[1] += 1
        print("== byte[] by 3 referrer levels")
        for k, (size, n) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"  {size / 2**20:9.1f} MB {n:9,d} x byte[] <- " + " <- ".join(k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
