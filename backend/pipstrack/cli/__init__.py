"""The ``pipstrack`` command line."""
