"""Optimiser-side techniques composed around the SGD step: ENorm balancing,
late-phase weights, SWA (each a small object the Trainer wires in before the loop)."""
