package doodle.udf;

import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.api.java.UDF1;

/**
 * Spark Java UDF: Kafka message value (binary) to {@code struct<ts:bigint,uid:string,reason:string>}.
 *
 * <pre>
 *   spark.udf.registerJavaFunction(
 *       "doodle_parse", "doodle.udf.FrameParser", "struct&lt;ts:bigint,uid:string,reason:string&gt;")
 *   df.selectExpr("doodle_parse(value) AS f")
 * </pre>
 *
 * <p>{@code reason} is null for a good frame, else the first of {@code malformed_json},
 * {@code missing_ts}, {@code bad_ts}, {@code missing_uid}, {@code bad_uid} that applies. A null
 * value is {@code malformed_json}. {@code ts} / {@code uid} are each set whenever that field
 * itself is valid (so a {@code bad_uid} frame still carries its ts); both are null for
 * {@code malformed_json}. See {@link FrameScanner} for the exact rules.
 */
public final class FrameParser implements UDF1<byte[], Row> {
    private static final long serialVersionUID = 1L;

    private static final ThreadLocal<FrameScanner.Result> RESULT =
            ThreadLocal.withInitial(FrameScanner.Result::new);

    @Override
    public Row call(byte[] value) {
        if (value == null) return RowFactory.create(null, null, FrameScanner.reasonName(FrameScanner.MALFORMED_JSON));
        final FrameScanner.Result r = RESULT.get();
        FrameScanner.scan(value, 0, value.length, r);
        final Row row = RowFactory.create(r.tsOrNull(), r.uidOrNull(), r.reasonName());
        r.src = null; // do not pin the last Kafka value
        return row;
    }
}
