"""Fine-tuning: the job config, the driver's side and the Ray Train worker."""
