package doodle.udf;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/**
 * Single-pass, iterative, allocation-free strict JSON validator that records only the ROOT-level
 * {@code ts} and {@code uid} of a frame.
 *
 * <p>The semantics mirror {@code doodlestats/reference.py} (Python {@code json.loads} on the
 * strictly UTF-8-decoded bytes, NaN/Infinity rejected, then the {@code ts}/{@code uid}
 * subschemas of {@code schemas/frame.schema.json}):
 *
 * <ul>
 *   <li>the whole document is validated per RFC 8259: whitespace is only {@code ' ' \t \n \r}, a
 *       single value with only whitespace around it, strings without raw control characters
 *       ({@code < 0x20}), escapes {@code \" \\ \/ \b \f \n \r \t \\uXXXX}, numbers per the JSON
 *       grammar, and well-formed UTF-8 (no overlongs, no encoded surrogates, nothing above
 *       U+10FFFF). A leading BOM is not whitespace, so it is malformed (as in Python).
 *   <li>the root must be an object; containers may nest at most {@link #MAX_DEPTH} deep
 *       (the root object is depth 1); deeper documents are {@code malformed_json}.
 *   <li>only keys at depth 1 are looked at; a key may be written with escapes
 *       ({@code "\\u0075id"} is {@code uid}, decoded on a slow path); on duplicate root keys the
 *       LAST one wins.
 *   <li>{@code \\uXXXX} escapes are kept as UTF-16 code units (a pair of surrogate escapes is one
 *       code point). A lone surrogate escape is accepted anywhere (Python's json does the same),
 *       except that a uid containing one is {@code bad_uid}: it is no valid Unicode string and
 *       could not be encoded to UTF-8 downstream.
 * </ul>
 *
 * <p>{@code ts} rule: a JSON integer in 0..253402300799; or a number with fraction/exponent whose
 * IEEE-754 double value (correctly rounded, as Python's {@code float}) is integral and in range
 * ({@code -0.0} and {@code 1e-400} are 0; {@code 1e400} is not an integer); or a string whose
 * unescaped content is 1..12 ASCII digits. Anything else is {@code bad_ts}.
 *
 * <p>{@code uid} rule: a string that is non-empty after unescaping and holds no lone surrogate.
 *
 * <p>Not thread-safe per {@link Result}: use one {@code Result} per thread.
 */
public final class FrameScanner {
    private FrameScanner() {}

    /** Maximum container nesting depth (root object = 1); deeper is malformed_json. */
    public static final int MAX_DEPTH = 512;
    /** Largest accepted ts (9999-12-31T23:59:59Z). */
    public static final long TS_MAX = 253402300799L;

    // Reason codes (index into REASONS).
    public static final int OK = 0;
    public static final int MALFORMED_JSON = 1;
    public static final int MISSING_TS = 2;
    public static final int BAD_TS = 3;
    public static final int MISSING_UID = 4;
    public static final int BAD_UID = 5;

    private static final String[] REASONS = {
        null, "malformed_json", "missing_ts", "bad_ts", "missing_uid", "bad_uid"
    };

    /** Reason code to its contract spelling (doodlestats/reasons.py); null for OK. */
    public static String reasonName(int code) {
        return REASONS[code];
    }

    // Field states.
    public static final int ABSENT = 0;
    public static final int GOOD = 1;
    public static final int BAD = 2;

    // Which root key the value being parsed belongs to.
    private static final int K_NONE = 0;
    private static final int K_TS = 1;
    private static final int K_UID = 2;

    /** Byte classes inside strings: 0 = plain ASCII, 1 = needs attention. */
    private static final boolean[] STR_SPECIAL = new boolean[256];
    /** Characters allowed after a backslash, besides 'u'. */
    private static final boolean[] SIMPLE_ESC = new boolean[256];
    /** Hex digit values, -1 if not a hex digit. */
    private static final byte[] HEX = new byte[256];

    static {
        for (int c = 0; c < 256; c++) {
            STR_SPECIAL[c] = c < 0x20 || c == '"' || c == '\\' || c >= 0x80;
            HEX[c] = -1;
        }
        for (char c : new char[] {'"', '\\', '/', 'b', 'f', 'n', 'r', 't'}) SIMPLE_ESC[c] = true;
        for (int c = '0'; c <= '9'; c++) HEX[c] = (byte) (c - '0');
        for (int c = 'a'; c <= 'f'; c++) HEX[c] = (byte) (c - 'a' + 10);
        for (int c = 'A'; c <= 'F'; c++) HEX[c] = (byte) (c - 'A' + 10);
    }

    /** Mutable scan result plus the scratch space the scanner needs (reuse one per thread). */
    public static final class Result {
        /** One of OK, MALFORMED_JSON, MISSING_TS, BAD_TS, MISSING_UID, BAD_UID. */
        public int reason;
        /** ABSENT / GOOD / BAD for the last root-level ts. */
        public int tsState;
        /** Valid only when tsState == GOOD. */
        public long ts;
        /** ABSENT / GOOD / BAD for the last root-level uid. */
        public int uidState;
        /** Byte range (inside the quotes) of the last root uid string, valid when uidState == GOOD. */
        public int uidStart;
        public int uidEnd;
        public boolean uidEscaped;

        byte[] src;
        /** Set by scanString: whether the string just scanned contained a backslash escape. */
        boolean esc;
        /** Container kinds by depth: bit d-1 set means the container at depth d is an array. */
        final long[] kinds = new long[(MAX_DEPTH + 63) / 64];
        final char[] scratch = new char[16];

        void reset(byte[] b) {
            src = b;
            reason = OK;
            tsState = ABSENT;
            ts = 0;
            uidState = ABSENT;
            uidStart = 0;
            uidEnd = 0;
            uidEscaped = false;
        }

        /** The ts if the frame's ts is valid (even when the uid is not), else null. */
        public Long tsOrNull() {
            return reason != MALFORMED_JSON && tsState == GOOD ? Long.valueOf(ts) : null;
        }

        /** Decodes the uid (the only allocation) if the frame's uid is valid, else null. */
        public String uidOrNull() {
            if (reason == MALFORMED_JSON || uidState != GOOD) return null;
            if (!uidEscaped) {
                return new String(src, uidStart, uidEnd - uidStart, StandardCharsets.UTF_8);
            }
            char[] out = new char[uidEnd - uidStart];
            int n = decodeUnits(src, uidStart, uidEnd, out, out.length);
            return new String(out, 0, n);
        }

        public String reasonName() {
            return REASONS[reason];
        }
    }

    private static int malformed(Result r) {
        r.reason = MALFORMED_JSON;
        return MALFORMED_JSON;
    }

    private static final int S_KEY = 0;
    private static final int S_VALUE = 1;
    private static final int S_AFTER = 2;

    /**
     * Scans {@code b[off, off+len)} as one frame. Returns the reason code (also stored in
     * {@code r.reason}); the ts/uid fields of {@code r} describe the frame.
     */
    @SuppressWarnings("fallthrough")
    public static int scan(byte[] b, int off, int len, Result r) {
        r.reset(b);
        if (off < 0 || len < 0 || len > b.length - off) throw new IndexOutOfBoundsException();
        final int end = off + len;
        final long[] kinds = r.kinds;
        int i = skipWs(b, off, end);
        if (i >= end || b[i] != '{') return malformed(r);
        int depth = 1;
        kinds[0] &= ~1L; // depth 1 = object
        int key = K_NONE;
        int state;
        i = skipWs(b, i + 1, end);
        if (i < end && b[i] == '}') {
            i++;
            depth = 0;
            state = -1;
        } else {
            state = S_KEY;
        }
        loop:
        while (depth > 0) {
            switch (state) {
                case S_KEY: {
                    if (i >= end || b[i] != '"') return malformed(r);
                    final int ks = i + 1;
                    final int ke = scanString(b, ks, end, r);
                    if (ke < 0) return malformed(r);
                    if (depth == 1) key = matchKey(b, ks, ke, r);
                    i = ke + 1;
                    if (i < end && b[i] == ':') {
                        i++;
                    } else {
                        i = skipWs(b, i, end);
                        if (i >= end || b[i] != ':') return malformed(r);
                        i++;
                    }
                    i = skipWs(b, i, end);
                }
                // fall through
                case S_VALUE: {
                    if (i >= end) return malformed(r);
                    final int c = b[i];
                    if (c == '"') {
                        final int s = i + 1;
                        final int e = scanString(b, s, end, r);
                        if (e < 0) return malformed(r);
                        if (key != K_NONE) {
                            if (key == K_TS) tsString(b, s, e, r);
                            else {
                                r.uidState = e > s ? GOOD : BAD;
                                r.uidStart = s;
                                r.uidEnd = e;
                                r.uidEscaped = r.esc;
                            }
                            key = K_NONE;
                        }
                        i = e + 1;
                    } else if (c == '{' || c == '[') {
                        if (key != K_NONE) {
                            markBad(key, r);
                            key = K_NONE;
                        }
                        if (depth >= MAX_DEPTH) return malformed(r);
                        final boolean arr = c == '[';
                        final int bit = depth; // new depth = depth + 1 -> bit index depth
                        if (arr) kinds[bit >>> 6] |= 1L << bit;
                        else kinds[bit >>> 6] &= ~(1L << bit);
                        depth++;
                        i = skipWs(b, i + 1, end);
                        if (i < end && b[i] == (arr ? ']' : '}')) {
                            i++;
                            depth--;
                        } else {
                            state = arr ? S_VALUE : S_KEY;
                            continue loop;
                        }
                    } else if (c == '-' || (c >= '0' && c <= '9')) {
                        final int e = scanNumber(b, i, end);
                        if (e < 0) return malformed(r);
                        if (key != K_NONE) {
                            if (key == K_TS) tsNumber(b, i, e, r);
                            else r.uidState = BAD;
                            key = K_NONE;
                        }
                        i = e;
                    } else {
                        if (c == 't') {
                            if (i + 4 > end || b[i + 1] != 'r' || b[i + 2] != 'u' || b[i + 3] != 'e') return malformed(r);
                            i += 4;
                        } else if (c == 'f') {
                            if (i + 5 > end || b[i + 1] != 'a' || b[i + 2] != 'l' || b[i + 3] != 's' || b[i + 4] != 'e') return malformed(r);
                            i += 5;
                        } else if (c == 'n') {
                            if (i + 4 > end || b[i + 1] != 'u' || b[i + 2] != 'l' || b[i + 3] != 'l') return malformed(r);
                            i += 4;
                        } else {
                            return malformed(r);
                        }
                        if (key != K_NONE) {
                            markBad(key, r);
                            key = K_NONE;
                        }
                    }
                }
                // fall through
                case S_AFTER: {
                    i = skipWs(b, i, end);
                    if (i >= end) return malformed(r);
                    final int c = b[i];
                    final int top = depth - 1;
                    final boolean arr = (kinds[top >>> 6] & (1L << top)) != 0;
                    if (c == ',') {
                        i = skipWs(b, i + 1, end);
                        state = arr ? S_VALUE : S_KEY;
                        continue loop;
                    }
                    if (c == (arr ? ']' : '}')) {
                        i++;
                        depth--;
                        state = S_AFTER;
                        continue loop;
                    }
                    return malformed(r);
                }
                default:
                    throw new IllegalStateException();
            }
        }
        i = skipWs(b, i, end);
        if (i != end) return malformed(r);
        if (r.uidState == GOOD && r.uidEscaped && hasLoneSurrogate(b, r.uidStart, r.uidEnd)) {
            r.uidState = BAD;
        }
        final int reason;
        if (r.tsState == ABSENT) reason = MISSING_TS;
        else if (r.tsState == BAD) reason = BAD_TS;
        else if (r.uidState == ABSENT) reason = MISSING_UID;
        else if (r.uidState == BAD) reason = BAD_UID;
        else reason = OK;
        r.reason = reason;
        return reason;
    }

    private static void markBad(int key, Result r) {
        if (key == K_TS) r.tsState = BAD;
        else r.uidState = BAD;
    }

    private static int skipWs(byte[] b, int i, int end) {
        while (i < end) {
            final byte c = b[i];
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') i++;
            else break;
        }
        return i;
    }

    /**
     * Scans a string body starting at {@code i} (just after the opening quote). Returns the index
     * of the closing quote, or -1 if the string is invalid or unterminated. Sets {@code r.esc}.
     */
    static int scanString(byte[] b, int i, int end, Result r) {
        boolean esc = false;
        // One loop for mixed text: a 2-byte UTF-8 sequence (Cyrillic, Latin-1 accents) is
        // checked first, a plain-ASCII byte starts a skip of 8 bytes at a time; text that
        // switches between the two every few characters never leaves this loop.
        for (;;) {
            if (i >= end) return -1;
            final int c = b[i] & 0xFF;
            if (c >= 0xC2 && c < 0xE0) {
                if (i + 1 >= end || (b[i + 1] & 0xC0) != 0x80) return -1;
                i += 2;
                continue;
            }
            if (!STR_SPECIAL[c]) {
                i++;
                while (i + 8 <= end) {
                    final long m = specialMask((long) LONG_LE.get(b, i));
                    if (m != 0) {
                        i += Long.numberOfTrailingZeros(m) >>> 3;
                        break;
                    }
                    i += 8;
                }
                continue;
            }
            if (c == '"') {
                r.esc = esc;
                return i;
            }
            if (c == '\\') {
                esc = true;
                if (i + 1 >= end) return -1;
                final int d = b[i + 1] & 0xFF;
                if (d == 'u') {
                    if (i + 6 > end
                            || (HEX[b[i + 2] & 0xFF] | HEX[b[i + 3] & 0xFF] | HEX[b[i + 4] & 0xFF] | HEX[b[i + 5] & 0xFF]) < 0) {
                        return -1;
                    }
                    i += 6;
                } else if (SIMPLE_ESC[d]) {
                    i += 2;
                } else {
                    return -1;
                }
                continue;
            }
            if (c < 0x20) return -1;
            i = utf8(b, i, end, c); // 3- and 4-byte sequences, and every invalid lead byte
            if (i < 0) return -1;
        }
    }

    private static final VarHandle LONG_LE =
            MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);
    private static final long ONES = 0x0101010101010101L;
    private static final long HIGHS = 0x8080808080808080L;

    /**
     * SWAR: high bit set in each byte lane of {@code x} that is '"', '\\', below 0x20 or at least
     * 0x80. Borrows can only flag lanes above a truly flagged one, so the lowest flag is exact.
     */
    private static long specialMask(long x) {
        final long q = x ^ 0x2222222222222222L;
        final long s = x ^ 0x5C5C5C5C5C5C5C5CL;
        return (((q - ONES) & ~q) | ((s - ONES) & ~s) | ((x - 0x2020202020202020L) & ~x) | x) & HIGHS;
    }

    private static boolean cont(byte x) {
        return (x & 0xC0) == 0x80;
    }

    /** Validates one UTF-8 sequence whose lead byte {@code c >= 0x80} is at {@code i}. */
    private static int utf8(byte[] b, int i, int end, int c) {
        if (c < 0xC2) return -1; // stray continuation byte or overlong C0/C1
        if (c < 0xE0) {
            if (i + 1 >= end || !cont(b[i + 1])) return -1;
            return i + 2;
        }
        if (c < 0xF0) {
            if (i + 2 >= end) return -1;
            final int c1 = b[i + 1] & 0xFF;
            if (c == 0xE0) {
                if (c1 < 0xA0 || c1 > 0xBF) return -1; // overlong
            } else if (c == 0xED) {
                if (c1 < 0x80 || c1 > 0x9F) return -1; // surrogates D800-DFFF
            } else if ((c1 & 0xC0) != 0x80) {
                return -1;
            }
            if (!cont(b[i + 2])) return -1;
            return i + 3;
        }
        if (c < 0xF5) {
            if (i + 3 >= end) return -1;
            final int c1 = b[i + 1] & 0xFF;
            if (c == 0xF0) {
                if (c1 < 0x90 || c1 > 0xBF) return -1; // overlong
            } else if (c == 0xF4) {
                if (c1 < 0x80 || c1 > 0x8F) return -1; // > U+10FFFF
            } else if ((c1 & 0xC0) != 0x80) {
                return -1;
            }
            if (!cont(b[i + 2]) || !cont(b[i + 3])) return -1;
            return i + 4;
        }
        return -1;
    }

    private static boolean digit(byte c) {
        return c >= '0' && c <= '9';
    }

    /** Scans a number starting at {@code i}; returns the index after it or -1. */
    static int scanNumber(byte[] b, int i, int end) {
        if (b[i] == '-') {
            i++;
            if (i >= end) return -1;
        }
        final byte c = b[i];
        if (c == '0') {
            i++;
        } else if (c >= '1' && c <= '9') {
            i++;
            while (i < end && digit(b[i])) i++;
        } else {
            return -1;
        }
        if (i < end && b[i] == '.') {
            i++;
            if (i >= end || !digit(b[i])) return -1;
            i++;
            while (i < end && digit(b[i])) i++;
        }
        if (i < end && (b[i] == 'e' || b[i] == 'E')) {
            i++;
            if (i < end && (b[i] == '+' || b[i] == '-')) i++;
            if (i >= end || !digit(b[i])) return -1;
            i++;
            while (i < end && digit(b[i])) i++;
        }
        return i;
    }

    /** Root key in b[s, e) (validated string body): K_TS, K_UID or K_NONE. */
    private static int matchKey(byte[] b, int s, int e, Result r) {
        if (!r.esc) {
            final int n = e - s;
            if (n == 2) return b[s] == 't' && b[s + 1] == 's' ? K_TS : K_NONE;
            if (n == 3) return b[s] == 'u' && b[s + 1] == 'i' && b[s + 2] == 'd' ? K_UID : K_NONE;
            return K_NONE;
        }
        // Slow path: the key has escapes; decode at most 3 UTF-16 units.
        final char[] u = r.scratch;
        final int n = decodeUnits(b, s, e, u, 3);
        if (n == 2 && u[0] == 't' && u[1] == 's') return K_TS;
        if (n == 3 && u[0] == 'u' && u[1] == 'i' && u[2] == 'd') return K_UID;
        return K_NONE;
    }

    /**
     * Whether the validated string body b[s, e) decodes to a lone (unpaired) surrogate. Only
     * {@code \\uXXXX} escapes can produce surrogates (valid UTF-8 cannot); a high surrogate escape
     * pairs with an immediately following low surrogate escape, as in Python's json.
     */
    static boolean hasLoneSurrogate(byte[] b, int s, int e) {
        int i = s;
        while (i < e) {
            if (b[i] != '\\') {
                i++;
                continue;
            }
            if (b[i + 1] != 'u') {
                i += 2;
                continue;
            }
            final int u = hex4(b, i + 2);
            i += 6;
            if (u < 0xD800 || u > 0xDFFF) continue;
            if (u >= 0xDC00) return true; // low surrogate without a high one before it
            if (i + 6 <= e && b[i] == '\\' && b[i + 1] == 'u') {
                final int lo = hex4(b, i + 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    i += 6;
                    continue;
                }
            }
            return true;
        }
        return false;
    }

    private static int hex4(byte[] b, int i) {
        return (HEX[b[i] & 0xFF] << 12) | (HEX[b[i + 1] & 0xFF] << 8) | (HEX[b[i + 2] & 0xFF] << 4) | HEX[b[i + 3] & 0xFF];
    }

    /** ts given as a string b[s, e): 1..12 ASCII digits after unescaping. */
    private static void tsString(byte[] b, int s, int e, Result r) {
        long v = 0;
        if (!r.esc) {
            final int n = e - s;
            if (n < 1 || n > 12) {
                r.tsState = BAD;
                return;
            }
            for (int k = s; k < e; k++) {
                final byte c = b[k];
                if (!digit(c)) {
                    r.tsState = BAD;
                    return;
                }
                v = v * 10 + (c - '0');
            }
        } else {
            final char[] u = r.scratch;
            final int n = decodeUnits(b, s, e, u, 12);
            if (n < 1) { // n == -1: more than 12 units
                r.tsState = BAD;
                return;
            }
            for (int k = 0; k < n; k++) {
                final char c = u[k];
                if (c < '0' || c > '9') {
                    r.tsState = BAD;
                    return;
                }
                v = v * 10 + (c - '0');
            }
        }
        r.ts = v;
        r.tsState = GOOD;
    }

    /** ts given as a number b[s, e) (already validated against the JSON grammar). */
    private static void tsNumber(byte[] b, int s, int e, Result r) {
        final boolean neg = b[s] == '-';
        final int p = neg ? s + 1 : s;
        int q = p;
        while (q < e && digit(b[q])) q++;
        boolean integral = q == e; // no fraction, no exponent
        if (!integral && b[q] == '.') {
            // Fast path: fraction of zeros only and no exponent -> exactly the integer part.
            int k = q + 1;
            while (k < e && b[k] == '0') k++;
            integral = k == e;
        }
        if (integral) {
            final int nd = q - p;
            if (neg) {
                // -0 (or -0.000) is 0; every other negative is out of range.
                if (nd == 1 && b[p] == '0') {
                    r.ts = 0;
                    r.tsState = GOOD;
                } else {
                    r.tsState = BAD;
                }
                return;
            }
            if (nd > 12) { // >= 10^12 > TS_MAX (and never overflows a long)
                r.tsState = BAD;
                return;
            }
            long v = 0;
            for (int k = p; k < q; k++) v = v * 10 + (b[k] - '0');
            if (v <= TS_MAX) {
                r.ts = v;
                r.tsState = GOOD;
            } else {
                r.tsState = BAD;
            }
            return;
        }
        // Slow path (rare): the IEEE double value decides, exactly like Python float + jsonschema.
        final double d = Double.parseDouble(new String(b, s, e - s, StandardCharsets.ISO_8859_1));
        if (d >= 0 && d <= (double) TS_MAX && d == Math.floor(d)) {
            r.ts = (long) d;
            r.tsState = GOOD;
        } else {
            r.tsState = BAD;
        }
    }

    /**
     * Decodes a validated string body b[s, e) into UTF-16 units. Returns the unit count, or -1 if
     * it would exceed {@code max}.
     */
    static int decodeUnits(byte[] b, int s, int e, char[] out, int max) {
        int n = 0;
        int i = s;
        while (i < e) {
            final int c = b[i] & 0xFF;
            if (c == '\\') {
                final int d = b[i + 1];
                char ch;
                switch (d) {
                    case 'b': ch = '\b'; break;
                    case 'f': ch = '\f'; break;
                    case 'n': ch = '\n'; break;
                    case 'r': ch = '\r'; break;
                    case 't': ch = '\t'; break;
                    case 'u':
                        ch = (char) ((HEX[b[i + 2] & 0xFF] << 12) | (HEX[b[i + 3] & 0xFF] << 8)
                                | (HEX[b[i + 4] & 0xFF] << 4) | HEX[b[i + 5] & 0xFF]);
                        i += 4;
                        break;
                    default: ch = (char) d; break; // " \ /
                }
                i += 2;
                if (n >= max) return -1;
                out[n++] = ch;
            } else if (c < 0x80) {
                if (n >= max) return -1;
                out[n++] = (char) c;
                i++;
            } else if (c < 0xE0) {
                if (n >= max) return -1;
                out[n++] = (char) (((c & 0x1F) << 6) | (b[i + 1] & 0x3F));
                i += 2;
            } else if (c < 0xF0) {
                if (n >= max) return -1;
                out[n++] = (char) (((c & 0x0F) << 12) | ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F));
                i += 3;
            } else {
                if (n + 2 > max) return -1;
                final int cp = ((c & 0x07) << 18) | ((b[i + 1] & 0x3F) << 12) | ((b[i + 2] & 0x3F) << 6)
                        | (b[i + 3] & 0x3F);
                out[n++] = Character.highSurrogate(cp);
                out[n++] = Character.lowSurrogate(cp);
                i += 4;
            }
        }
        return n;
    }
}
