//! Installing and starting the real servers (in progress).
