package doodle.udf;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.io.LongWritable;
import org.apache.hadoop.io.Text;
import org.apache.hadoop.mapreduce.InputSplit;
import org.apache.hadoop.mapreduce.JobContext;
import org.apache.hadoop.mapreduce.lib.input.FileSplit;
import org.apache.hadoop.mapreduce.lib.input.TextInputFormat;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaNewHadoopRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.api.java.function.Function2;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.classic.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

import scala.Tuple2;

/**
 * Text files read as byte ranges, so that one big file is read by many tasks, with the byte
 * offset of every line.
 *
 * <p>The caller names ranges of files ({@code path \t start \t length}, one per line); each is
 * cut into splits of at most {@code splitBytes}. Hadoop's line reader gives every line to
 * exactly one split (a split skips the line it starts inside of, and reads past its end to
 * finish its last line), so a tiling of a file reads each line once. A compressed file whose
 * codec cannot split (gzip) is one split, whatever the range says.
 *
 * <p>Rows: {@code value} (the line's bytes, without the line end), {@code file} (the path as
 * given), {@code partition} (the split's index in this read), {@code offset} (the line's index
 * within its split, in file order) and {@code byte_offset} (Hadoop's record key: the byte
 * offset of the line in the file; for a compressed file, in its decompressed text).
 *
 * <pre>
 *   df = DataFrame(jvm.doodle.udf.LineRanges.read(spark._jsparkSession, ranges, 64 << 20), spark)
 * </pre>
 */
public final class LineRanges {
    /** Hadoop configuration key of the ranges. */
    public static final String RANGES = "doodle.line.ranges";
    /** Hadoop configuration key of the largest split, in bytes. */
    public static final String SPLIT_BYTES = "doodle.line.split.bytes";

    public static final StructType SCHEMA = new StructType()
            .add("value", DataTypes.BinaryType, false)
            .add("file", DataTypes.StringType, false)
            .add("partition", DataTypes.IntegerType, false)
            .add("offset", DataTypes.LongType, false)
            .add("byte_offset", DataTypes.LongType, false);

    private LineRanges() {
    }

    /** The lines of {@code ranges} as a DataFrame of {@link #SCHEMA}, one task per split. */
    @SuppressWarnings("unchecked")
    public static Dataset<Row> read(SparkSession spark, String ranges, long splitBytes) {
        Configuration conf = spark.sessionState().newHadoopConf();
        conf.set(RANGES, ranges);
        conf.setLong(SPLIT_BYTES, splitBytes);
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        JavaNewHadoopRDD<LongWritable, Text> lines = (JavaNewHadoopRDD<LongWritable, Text>)
                jsc.newAPIHadoopRDD(conf, Format.class, LongWritable.class, Text.class);
        JavaRDD<Row> rows = lines.mapPartitionsWithInputSplit(new ToRows(), true);
        return spark.createDataFrame(rows, SCHEMA);
    }

    /** Splits from the configured ranges instead of from whole files. */
    public static final class Format extends TextInputFormat {
        @Override
        public List<InputSplit> getSplits(JobContext job) throws IOException {
            Configuration conf = job.getConfiguration();
            long size = Math.max(1L, conf.getLong(SPLIT_BYTES, 128L << 20));
            List<InputSplit> out = new ArrayList<>();
            for (String range : conf.get(RANGES, "").split("\n")) {
                if (range.isEmpty()) {
                    continue;
                }
                String[] f = range.split("\t");
                Path path = new Path(f[0]);
                long start = Long.parseLong(f[1]);
                long end = start + Long.parseLong(f[2]);
                if (!isSplitable(job, path)) {
                    out.add(new FileSplit(path, start, end - start, new String[0]));
                    continue;
                }
                for (long s = start; s < end; s += size) {
                    out.add(new FileSplit(path, s, Math.min(size, end - s), new String[0]));
                }
            }
            return out;
        }
    }

    /** A split's records as rows: the bytes copied (Hadoop reuses its Text). */
    static final class ToRows implements Function2<InputSplit, Iterator<Tuple2<LongWritable, Text>>, Iterator<Row>> {
        private static final long serialVersionUID = 1L;

        @Override
        public Iterator<Row> call(InputSplit split, Iterator<Tuple2<LongWritable, Text>> records) {
            String file = ((FileSplit) split).getPath().toString();
            int partition = TaskContext.getPartitionId();
            return new Iterator<Row>() {
                private long index = 0;

                @Override
                public boolean hasNext() {
                    return records.hasNext();
                }

                @Override
                public Row next() {
                    Tuple2<LongWritable, Text> r = records.next();
                    return RowFactory.create(r._2().copyBytes(), file, partition, index++, r._1().get());
                }
            };
        }
    }
}
