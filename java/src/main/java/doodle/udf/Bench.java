package doodle.udf;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Single-thread throughput of the frame parser over a file of '\n'-separated frames.
 *
 * <pre>
 *   java -cp java/target/doodle-udf.jar doodle.udf.Bench FILE [SECONDS] [scan|full|udf]
 * </pre>
 *
 * <ul>
 *   <li>{@code scan}: {@link FrameScanner#scan} only (validation + root ts/uid location);
 *   <li>{@code full} (default): scan plus materialising ts (Long) and uid (String), i.e. what the
 *       UDF does minus the Row;
 *   <li>{@code udf}: {@link FrameParser#call} on per-frame byte[] (needs the Spark jars on the
 *       class path).
 * </ul>
 * Prints frames/s and MB/s after a warm-up of about a third of the time, by wall clock and per
 * CPU-second of the benchmark thread (the latter is less disturbed by other load).
 */
public final class Bench {
    private Bench() {}

    public static void main(String[] args) throws IOException {
        if (args.length < 1) {
            System.err.println("usage: Bench FILE [SECONDS] [scan|full|udf]");
            System.exit(2);
        }
        final byte[] all = Files.readAllBytes(Path.of(args[0]));
        final double seconds = args.length > 1 ? Double.parseDouble(args[1]) : 10;
        final String mode = args.length > 2 ? args[2] : "full";
        final List<int[]> spans = new ArrayList<>();
        int start = 0;
        while (start < all.length) {
            int nl = start;
            while (nl < all.length && all[nl] != '\n') nl++;
            spans.add(new int[] {start, nl - start});
            start = nl + 1;
        }
        final int n = spans.size();
        final int[] offs = new int[n];
        final int[] lens = new int[n];
        long bytes = 0;
        for (int k = 0; k < n; k++) {
            offs[k] = spans.get(k)[0];
            lens[k] = spans.get(k)[1];
            bytes += lens[k];
        }
        byte[][] copies = null;
        if (mode.equals("udf")) {
            copies = new byte[n][];
            for (int k = 0; k < n; k++) copies[k] = java.util.Arrays.copyOfRange(all, offs[k], offs[k] + lens[k]);
        }
        final int[] reasons = new int[FrameScanner.BAD_UID + 1];
        final FrameScanner.Result r = new FrameScanner.Result();
        for (int k = 0; k < n; k++) reasons[FrameScanner.scan(all, offs[k], lens[k], r)]++;
        System.out.printf("frames=%d avg_bytes=%.0f reasons: ok=%d malformed=%d missing_ts=%d bad_ts=%d missing_uid=%d bad_uid=%d%n",
                n, (double) bytes / n, reasons[0], reasons[1], reasons[2], reasons[3], reasons[4], reasons[5]);

        final long warmNanos = (long) (seconds / 3 * 1e9);
        final long runNanos = (long) (seconds * 1e9);
        long sink = 0;
        final FrameParser udf = mode.equals("udf") ? new FrameParser() : null;
        final java.lang.management.ThreadMXBean cpu = java.lang.management.ManagementFactory.getThreadMXBean();
        for (int phase = 0; phase < 2; phase++) {
            final long limit = phase == 0 ? warmNanos : runNanos;
            final long t0 = System.nanoTime();
            final long c0 = cpu.getCurrentThreadCpuTime();
            long frames = 0;
            long nbytes = 0;
            long t;
            do {
                for (int k = 0; k < n; k++) {
                    switch (mode) {
                        case "scan":
                            sink += FrameScanner.scan(all, offs[k], lens[k], r);
                            break;
                        case "udf":
                            sink += udf.call(copies[k]).hashCode();
                            break;
                        default: {
                            FrameScanner.scan(all, offs[k], lens[k], r);
                            final Long ts = r.tsOrNull();
                            final String uid = r.uidOrNull();
                            sink += (ts == null ? 0 : ts) + (uid == null ? 0 : uid.length());
                        }
                    }
                }
                frames += n;
                nbytes += bytes;
                t = System.nanoTime() - t0;
            } while (t < limit);
            if (phase == 1) {
                final double c = (cpu.getCurrentThreadCpuTime() - c0) / 1e9;
                System.out.printf("mode=%s frames/s=%.0f MB/s=%.1f per CPU-second: frames/s=%.0f MB/s=%.1f"
                                + " (%d frames, %.2f s wall, %.2f s CPU, 1 thread)%n",
                        mode, frames / (t / 1e9), nbytes / (t / 1e9) / 1e6, frames / c, nbytes / c / 1e6,
                        frames, t / 1e9, c);
            }
        }
        if (sink == 42) System.out.println();
    }
}
