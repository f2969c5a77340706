"""Bulk labeling with Ray Data into Parquet: the run, its output store and manifest."""
