"""Tasks (classify / multilabel / ner) through one registry: heads, losses, decoding, label
encoding, the CRF and its in-graph serving outputs."""
