"""The encoder: its architecture config, the keras-bert factory, fused kernels, TF1 checkpoints,
character tokenization, the parameter table and the GPU memory planner."""
