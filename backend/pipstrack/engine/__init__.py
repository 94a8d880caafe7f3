"""The tracking engine: the PIPs network, its weights, long-clip chaining, refinement and co-motion."""
