//! The `junction` binary as a user runs it: `check`, `registration`, `run`, and every
//! config error reported at once.
