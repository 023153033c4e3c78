"""Image builds: base root filesystems, layer cache, registry pulls and the sandbox runtime."""
