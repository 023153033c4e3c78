"""The program that runs inside every container."""
