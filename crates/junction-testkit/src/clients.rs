//! Ordinary-user clients for each network (in progress).
