"""Training the network on procedural clips."""
