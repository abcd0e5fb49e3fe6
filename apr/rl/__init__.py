"""RL math: advantages, credit assignment, losses (pure functions, registries)."""
