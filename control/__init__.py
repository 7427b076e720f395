"""The control plane: listing folders into batches (planning) and re-sending work nobody will deliver (sweeping)."""
