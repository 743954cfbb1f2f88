"""The Parquet dataset and manifest: writing, reading, reports; knows no Ray scheduling."""
