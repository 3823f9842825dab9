"""Training on Ray Train: launch, worker loop, one module per stage."""
