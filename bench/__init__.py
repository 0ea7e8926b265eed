"""Throughput benchmarks of v0adam against every torch.optim.AdamW implementation (`python -m bench`)."""
