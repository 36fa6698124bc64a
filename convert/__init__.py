"""Weight conversion between the torch and Paddle trees, official-checkpoint import, cross-framework checks."""
