package doodle.udf;

import java.io.Serializable;
import java.util.HashMap;
import java.util.Map;
import java.util.Objects;

import org.apache.spark.sql.Encoder;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.expressions.Aggregator;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * A batch's summary as one aggregate, the SQL function
 * {@code doodle_tally(minute, src, partition, reason, ts, offset, unkept)}: one entry per
 * distinct (minute, src, partition, reason) with the frame count, the largest ts, the count of
 * {@code unkept} rows and the first and last offset.
 *
 * <p>It exists so that the summary can ride along with a pass that runs anyway, as a metric of
 * {@code Dataset.observe}: Spark merges each task's partial map on the driver, no shuffle and
 * no extra job. The result is JSON, an array of
 * {@code [minute, src, partition, reason, n, max_ts, unkept, first_offset, last_offset]}
 * (nulls where the input was null); it has as many entries as distinct keys, never a row per
 * frame.
 *
 * <pre>
 *   spark._jvm.doodle.udf.BatchTally.register(spark._jsparkSession)
 *   df.observe(obs, expr("doodle_tally(minute, src, partition, reason, ts, offset, unkept)"))
 * </pre>
 */
public final class BatchTally extends Aggregator<Row, HashMap<BatchTally.Key, long[]>, String> {
    private static final long serialVersionUID = 1L;

    /** SQL name. */
    public static final String NAME = "doodle_tally";

    private static final int N = 0, MAX_TS = 1, UNKEPT = 2, FIRST = 3, LAST = 4, HAS_TS = 5;

    /** The grouping key of one entry. */
    public static final class Key implements Serializable {
        private static final long serialVersionUID = 1L;
        final Long minute;
        final String src;
        final Integer partition;
        final String reason;
        private final int hash;

        Key(Long minute, String src, Integer partition, String reason) {
            this.minute = minute;
            this.src = src;
            this.partition = partition;
            this.reason = reason;
            this.hash = Objects.hash(minute, src, partition, reason);
        }

        @Override
        public boolean equals(Object o) {
            if (!(o instanceof Key)) return false;
            final Key k = (Key) o;
            return hash == k.hash && Objects.equals(minute, k.minute) && Objects.equals(partition, k.partition)
                    && Objects.equals(reason, k.reason) && Objects.equals(src, k.src);
        }

        @Override
        public int hashCode() {
            return hash;
        }
    }

    /** Registers {@link #NAME} in {@code spark}. */
    public static void register(SparkSession spark) {
        final StructType in = new StructType()
                .add("minute", DataTypes.LongType).add("src", DataTypes.StringType)
                .add("partition", DataTypes.IntegerType).add("reason", DataTypes.StringType)
                .add("ts", DataTypes.LongType).add("offset", DataTypes.LongType)
                .add("unkept", DataTypes.BooleanType);
        spark.udf().register(NAME, functions.udaf(new BatchTally(), Encoders.row(in)));
    }

    @Override
    public HashMap<Key, long[]> zero() {
        return new HashMap<>();
    }

    @Override
    public HashMap<Key, long[]> reduce(HashMap<Key, long[]> acc, Row r) {
        final Key k = new Key(r.isNullAt(0) ? null : r.getLong(0), r.isNullAt(1) ? null : r.getString(1),
                r.isNullAt(2) ? null : r.getInt(2), r.isNullAt(3) ? null : r.getString(3));
        long[] v = acc.get(k);
        if (v == null) {
            v = new long[] {0L, Long.MIN_VALUE, 0L, Long.MAX_VALUE, Long.MIN_VALUE, 0L};
            acc.put(k, v);
        }
        v[N]++;
        if (!r.isNullAt(4)) {
            v[MAX_TS] = Math.max(v[MAX_TS], r.getLong(4));
            v[HAS_TS] = 1L;
        }
        if (!r.isNullAt(5)) {
            v[FIRST] = Math.min(v[FIRST], r.getLong(5));
            v[LAST] = Math.max(v[LAST], r.getLong(5));
        }
        if (!r.isNullAt(6) && r.getBoolean(6)) v[UNKEPT]++;
        return acc;
    }

    @Override
    public HashMap<Key, long[]> merge(HashMap<Key, long[]> a, HashMap<Key, long[]> b) {
        for (Map.Entry<Key, long[]> e : b.entrySet()) {
            final long[] w = e.getValue();
            final long[] v = a.get(e.getKey());
            if (v == null) {
                a.put(e.getKey(), w.clone());
                continue;
            }
            v[N] += w[N];
            v[MAX_TS] = Math.max(v[MAX_TS], w[MAX_TS]);
            v[HAS_TS] |= w[HAS_TS];
            v[UNKEPT] += w[UNKEPT];
            v[FIRST] = Math.min(v[FIRST], w[FIRST]);
            v[LAST] = Math.max(v[LAST], w[LAST]);
        }
        return a;
    }

    @Override
    public String finish(HashMap<Key, long[]> acc) {
        final StringBuilder sb = new StringBuilder(64 + 96 * acc.size()).append('[');
        boolean first = true;
        for (Map.Entry<Key, long[]> e : acc.entrySet()) {
            final Key k = e.getKey();
            final long[] v = e.getValue();
            if (!first) sb.append(',');
            first = false;
            sb.append('[').append(k.minute).append(',');
            quote(sb, k.src).append(',').append(k.partition).append(',');
            quote(sb, k.reason).append(',').append(v[N]).append(',');
            sb.append(v[HAS_TS] == 1L ? Long.toString(v[MAX_TS]) : "null").append(',').append(v[UNKEPT]).append(',');
            sb.append(v[FIRST] == Long.MAX_VALUE ? "null" : Long.toString(v[FIRST])).append(',');
            sb.append(v[LAST] == Long.MIN_VALUE ? "null" : Long.toString(v[LAST])).append(']');
        }
        return sb.append(']').toString();
    }

    private static StringBuilder quote(StringBuilder sb, String s) {
        if (s == null) return sb.append("null");
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            final char c = s.charAt(i);
            if (c == '"' || c == '\\') sb.append('\\').append(c);
            else if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
        return sb.append('"');
    }

    @Override
    @SuppressWarnings({"unchecked", "rawtypes"})
    public Encoder<HashMap<Key, long[]>> bufferEncoder() {
        return (Encoder) Encoders.javaSerialization(HashMap.class);
    }

    @Override
    public Encoder<String> outputEncoder() {
        return Encoders.STRING();
    }
}
