"""The ``ketch`` command line."""
