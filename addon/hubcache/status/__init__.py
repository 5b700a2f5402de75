"""The status page at / on the metrics listener (pure: a Snapshot in, one self-contained HTML page out)."""
