"""Training utilities shared by the learned explainers and downstream tasks (linear probes)."""
