"""Workers run containers on one node. ``local`` is the runtime of the core issue."""
