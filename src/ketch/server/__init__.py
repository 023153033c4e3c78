"""The ketch control plane: HTTP API, durable state, scheduler and workers."""
