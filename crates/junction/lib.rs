//! The `junction` gateway as a library: config loading, wiring of the adapters around the
//! router, metrics. The binary in `main.rs` is a thin CLI over this.
