"""What a run reports: metrics as the reference printed them, report pages, TensorBoard scalars."""
