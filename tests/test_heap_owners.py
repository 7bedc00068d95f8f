"""bench.heap_owners on a real heap dump of a small JVM whose object graph the test wrote:
a static list holding 300 byte arrays of 4,000 bytes, and 7 Holder objects in a map."""

import shutil
import subprocess
import time

import pytest

from bench.heap_owners import Heap, main

PROGRAM = """
import java.util.*;

public class HeapShape {
    static final List<byte[]> KEPT = new ArrayList<>();
    static final Map<String, Holder> HOLDERS = new HashMap<>();
    static class Holder { final long[] data = new long[10]; }

    public static void main(String[] args) throws Exception {
        for (int i = 0; i < 300; i++) KEPT.add(new byte[4000]);
        for (int i = 0; i < 7; i++) HOLDERS.put("h" + i, new Holder());
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(120_000);
    }
}
"""


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    if not shutil.which("java") or not shutil.which("jcmd"):
        pytest.skip("needs a JDK (java, jcmd)")
    d = tmp_path_factory.mktemp("heap")
    src = d / "HeapShape.java"
    src.write_text(PROGRAM)
    proc = subprocess.Popen(["java", "-Xmx64m", str(src)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        out = d / "shape.hprof"
        for _ in range(20):   # the attach listener may need a moment after start
            r = subprocess.run(["jcmd", str(proc.pid), "GC.heap_dump", str(out)], capture_output=True, text=True)
            if out.exists():
                break
            time.sleep(0.5)
        assert out.exists(), r.stdout + r.stderr
        yield out
    finally:
        proc.kill()
        proc.wait()


def test_byte_arrays_are_found_with_their_holder(dump):
    h = Heap(str(dump))
    kept = [oid for oid, (t, size) in h.prim.items() if t == "byte[]" and size == 4000]
    assert len(kept) >= 300
    chains = {h.chain(oid, 4) for oid in kept}
    assert any(c.startswith("[Ljava.lang.Object; <- java.util.ArrayList <- class HeapShape") for c in chains), chains


def test_objects_of_a_class_are_grouped_by_owner(dump, capsys):
    assert main([str(dump), "--class", "HeapShape$Holder", "--through", "java.util.HashMap$Node",
                 "--through", "[Ljava.util.HashMap$Node;", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "== HeapShape$Holder: 7 objects" in out
    assert "7 x <- java.util.HashMap <- class HeapShape" in out


def test_bytes_report(dump, capsys):
    assert main([str(dump), "--bytes"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "<- [Ljava.lang.Object; <- java.util.ArrayList <- class HeapShape" in x)
    # 300 arrays of 4,000 bytes (+16 B headers are not counted: payload bytes)
    assert float(line.split("MB")[0]) >= 300 * 4000 / 2**20 - 0.05
