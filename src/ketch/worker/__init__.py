"""Workers run containers on one node: ``local.py`` (host processes) and ``bubblewrap.py``
(the ``sandbox`` runtime: isolate, seccomp, userns, cgroups, scratch disks, GPUs, Volume mounts)."""
