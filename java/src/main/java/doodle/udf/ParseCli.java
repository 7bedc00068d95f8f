package doodle.udf;

import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Arrays;

/**
 * Runs the frame parser over stdin without Spark (used by tests/test_parser.py).
 *
 * <p>Input framing:
 * <ul>
 *   <li>default: frames separated by {@code '\n'} only (a {@code '\r'} stays part of its line,
 *       where JSON treats it as whitespace); a final {@code '\n'} does not start an extra frame.
 *   <li>{@code --u32}: each frame is a big-endian unsigned 32-bit length followed by that many
 *       bytes; length {@code 0xFFFFFFFF} means a null value. Lets frames contain any byte.
 * </ul>
 *
 * <p>{@code --udf} goes through {@link FrameParser#call} and reads the Spark Row back (needs the
 * Spark jars, e.g. pyspark/jars/*, on the class path); the default calls {@link FrameScanner}
 * directly on slices of one input buffer.
 *
 * <p>Output: one line per frame, {@code ts TAB uid TAB reason}: ts in decimal or empty if null;
 * uid as a JSON string literal in Python {@code json.dumps} (ensure_ascii) form, or {@code -} if
 * null; reason or empty if null.
 */
public final class ParseCli {
    private ParseCli() {}

    public static void main(String[] args) throws IOException {
        boolean u32 = false;
        boolean udf = false;
        for (String a : args) {
            if (a.equals("--u32")) u32 = true;
            else if (a.equals("--udf")) udf = true;
            else {
                System.err.println("usage: ParseCli [--u32] [--udf] < frames");
                System.exit(2);
            }
        }
        final OutputStream out = new BufferedOutputStream(System.out, 1 << 16);
        final StringBuilder sb = new StringBuilder(256);
        final FrameScanner.Result r = new FrameScanner.Result();
        final Sink sink = udf ? new UdfSink() : null;
        if (u32) {
            final DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(System.in, 1 << 16));
            for (;;) {
                int n;
                try {
                    n = in.readInt();
                } catch (EOFException eof) {
                    break;
                }
                byte[] frame = null;
                if (n != -1) {
                    frame = new byte[n];
                    in.readFully(frame);
                }
                if (sink != null) sink.emit(frame, sb);
                else if (frame == null) line(sb, null, null, FrameScanner.reasonName(FrameScanner.MALFORMED_JSON));
                else emitScan(frame, 0, frame.length, r, sb);
                flushLine(sb, out);
            }
        } else {
            final byte[] all = readAll(System.in);
            int start = 0;
            while (start < all.length) {
                int nl = start;
                while (nl < all.length && all[nl] != '\n') nl++;
                if (sink != null) sink.emit(Arrays.copyOfRange(all, start, nl), sb);
                else emitScan(all, start, nl - start, r, sb);
                flushLine(sb, out);
                start = nl + 1;
            }
        }
        out.flush();
    }

    interface Sink {
        void emit(byte[] frame, StringBuilder sb);
    }

    /** Loaded only with --udf, so the default mode needs no Spark classes. */
    static final class UdfSink implements Sink {
        private final FrameParser parser = new FrameParser();

        @Override
        public void emit(byte[] frame, StringBuilder sb) {
            final org.apache.spark.sql.Row row = parser.call(frame);
            if (row.length() != 3) throw new IllegalStateException("row arity " + row.length());
            line(sb, (Long) row.get(0), (String) row.get(1), (String) row.get(2));
        }
    }

    private static void emitScan(byte[] b, int off, int len, FrameScanner.Result r, StringBuilder sb) {
        FrameScanner.scan(b, off, len, r);
        line(sb, r.tsOrNull(), r.uidOrNull(), r.reasonName());
    }

    private static byte[] readAll(InputStream in) throws IOException {
        return in.readAllBytes();
    }

    private static void flushLine(StringBuilder sb, OutputStream out) throws IOException {
        // Every char is ASCII (uid is written with \\u escapes).
        final int n = sb.length();
        for (int k = 0; k < n; k++) out.write(sb.charAt(k));
        sb.setLength(0);
    }

    static void line(StringBuilder sb, Long ts, String uid, String reason) {
        if (ts != null) sb.append(ts.longValue());
        sb.append('\t');
        if (uid == null) sb.append('-');
        else jsonString(sb, uid);
        sb.append('\t');
        if (reason != null) sb.append(reason);
        sb.append('\n');
    }

    private static final char[] HEXD = "0123456789abcdef".toCharArray();

    /** Same text as Python's json.dumps(s) (ensure_ascii=True): ASCII-only, lower-case \\u escapes. */
    static void jsonString(StringBuilder sb, String s) {
        sb.append('"');
        for (int k = 0; k < s.length(); k++) {
            final char c = s.charAt(k);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                case '\b': sb.append("\\b"); break;
                case '\f': sb.append("\\f"); break;
                default:
                    if (c >= 0x20 && c < 0x7F) {
                        sb.append(c);
                    } else {
                        sb.append("\\u").append(HEXD[(c >> 12) & 15]).append(HEXD[(c >> 8) & 15])
                                .append(HEXD[(c >> 4) & 15]).append(HEXD[c & 15]);
                    }
            }
        }
        sb.append('"');
    }
}
