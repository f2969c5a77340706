"""Reading inputs: the training files' formats, the bulk corpus read path and numpy batching."""
