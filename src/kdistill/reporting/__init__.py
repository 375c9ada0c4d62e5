"""Reporting: reads run records (``summary.json``, ``metrics.jsonl``) only; never imports torch."""
