"""What a run reports besides its log: summary, curves, compute graph, debug dump."""
