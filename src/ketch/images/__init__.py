"""Images: building them (base root filesystems, steps, registry pulls), their layer cache, and the
ketch bundle bound into every container. Running containers is ``ketch.worker``."""
