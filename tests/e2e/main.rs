//! End-to-end tests through the real servers (Synapse, Prosody, InspIRCd, ngIRCd).
