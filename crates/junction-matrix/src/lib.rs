//! Junction's matrix adapter (in progress).
