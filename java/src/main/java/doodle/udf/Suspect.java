package doodle.udf;

import java.util.Arrays;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.api.java.UDF2;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.types.DataTypes;

/**
 * The timestamp guard's single-pass pre-filter, as the SQL function {@code doodle_suspect(ts, skew)}.
 *
 * <p>True when {@code ts} is more than {@code skew} seconds away from the running median of the
 * last {@value #WINDOW} timestamps this task has seen, or while the task has seen fewer than
 * {@value #WARMUP}. A Spark task reads one contiguous offset range of one Kafka partition (or one
 * file) in order, so that running median is the frame's recent neighbourhood. The job keeps the
 * raw bytes of suspects only; the driver then judges every frame against the median of its
 * neighbourhood ({@code offset // neighbourhood}) and quarantines the outliers. Null ts: false
 * (such a frame is quarantined for its parse reason anyway) and not remembered.
 *
 * <p>The function keeps state between rows of one task, so it is registered as
 * non-deterministic (Spark then neither duplicates nor reorders it). Each task works on its own
 * deserialised copy; nothing is shared between threads.
 *
 * <pre>
 *   spark._jvm.doodle.udf.Suspect.register(spark._jsparkSession)
 *   df.selectExpr("doodle_suspect(ts, 3600) AS suspect")
 * </pre>
 */
public final class Suspect implements UDF2<Long, Long, Boolean> {
    private static final long serialVersionUID = 1L;

    /** SQL name. */
    public static final String NAME = "doodle_suspect";
    /** Timestamps in the running window. */
    public static final int WINDOW = 32;
    /** Timestamps a task must have seen before it trusts its median. */
    public static final int WARMUP = 8;
    /** The median is recomputed every this many rows once the window is warm. */
    private static final int RESORT = 8;

    private final long[] ring = new long[WINDOW];
    private final long[] sorted = new long[WINDOW];
    private int seen;
    private int pos;
    private int sinceSort;
    private long median;

    /** Registers {@link #NAME} (non-deterministic) in {@code spark}. */
    public static void register(SparkSession spark) {
        spark.udf().register(NAME, functions.udf(new Suspect(), DataTypes.BooleanType).asNondeterministic());
    }

    @Override
    public Boolean call(Long ts, Long skew) {
        if (ts == null) return Boolean.FALSE;
        final long t = ts;
        final boolean suspect = seen < WARMUP || Math.abs(t - median) > (skew == null ? 0L : skew);
        ring[pos] = t;
        pos = (pos + 1) % WINDOW;
        if (seen < WINDOW) seen++;
        if (seen <= WARMUP || ++sinceSort >= RESORT) {
            System.arraycopy(ring, 0, sorted, 0, seen);
            Arrays.sort(sorted, 0, seen);
            median = sorted[seen / 2];
            sinceSort = 0;
        }
        return suspect;
    }
}
