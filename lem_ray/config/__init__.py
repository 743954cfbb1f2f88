"""Campaign files to validated pydantic models; knows no Ray, torch or Parquet."""
