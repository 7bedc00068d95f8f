"""The stages of a micro-batch: parse, guard, classify, count, the driver step, and the pipeline that runs them."""
