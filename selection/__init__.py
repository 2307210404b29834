"""Choose the best model from a results table and make sure a matching PyTorch model exists."""
