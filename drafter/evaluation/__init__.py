"""Benchmarks against plain decoding (one run, prompts interleaved), the multi-drafter comparison, and reports."""
