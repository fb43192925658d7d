"""asv benchmarks for fastlr (pandas style: one module per topic, setup outside the timing)."""
