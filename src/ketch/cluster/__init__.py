"""ketch beyond one machine: containers on a Ray cluster (``ketch server start --ray``).

``agent.py`` is the ketch worker of one node, ``ray_worker.py`` the control
plane's side; see docs/cluster.md.
"""
