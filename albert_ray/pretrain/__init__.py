"""Masked-LM pre-training: its config, corpus read and packing, masking, the MLM head, the
worker and the driver."""
