//! Prometheus metrics and the health endpoint (in progress).
