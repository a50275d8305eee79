"""What things cost: hardware identity, model specs, timed kernels, profiles, cost models."""
