"""Extras beside the scripts: export, import, benchmarks, plots and run reports."""
