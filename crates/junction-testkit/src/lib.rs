//! Dev-only: starts the real chat servers on loopback (in progress).
