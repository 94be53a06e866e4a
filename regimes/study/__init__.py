"""Studies on Ray Tune: spec (YAML), trainable, search, Parquet sink, launch."""
