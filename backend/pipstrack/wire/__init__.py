"""The wire format and its client: numpy and pyzmq only, so the Blender extension vendors this package whole."""
