"""The guest: the program that runs inside every container (``python -m ketch.guest``)."""
