"""Running on Ray: attaching to a cluster, the local cluster, quiet output, progress, CPU facts
and the training loop's shared parts."""
