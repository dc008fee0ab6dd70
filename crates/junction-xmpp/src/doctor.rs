//! `junction doctor` on XMPP: the component logs in (server reachable, secret right), and each
//! linked MUC exists, archives (XEP-0313) and has the gateway's listener as admin or owner.
//!
//! It logs in through [`Probe`] (its own short component connection, never joining a room),
//! and not at all while a gateway runs from the same config.

use crate::probe::{Probe, ProbeError};
use crate::XmppConfig;
use junction_core::doctor::{Findings, TIMEOUT};

/// Runs the XMPP checks of `x` and of each of `rooms` (the MUCs the config's bridges link),
/// adding one finding per check to `out`. With `gateway_running` (a gateway holds the
/// config's store on this host) the component is not logged in at all, and that is said.
pub async fn check(
    x: &XmppConfig,
    rooms: &[String],
    gateway_running: bool,
    out: &mut Findings<'_>,
) {
    if gateway_running {
        // A second component login is refused by default, but a server set to replace
        // the old connection (Prosody's component_conflict_resolve = "kick_old") would
        // drop the gateway's: do not try.
        out.warn(
            "component",
            "not checked: a gateway runs from this config's data_dir (it holds the store), \
             and a second component login could displace its connection",
            "run `junction doctor` while the gateway is stopped to check the component and \
             its rooms",
        );
    } else {
        log_in_and_check(x, rooms, out).await;
    }
}

/// The component's login, then each room's existence, archive and the listener's affiliation.
async fn log_in_and_check(x: &XmppConfig, rooms: &[String], out: &mut Findings<'_>) {
    let mut probe = match Probe::connect(x, TIMEOUT).await {
        Ok(p) => {
            out.ok(
                "component",
                format!(
                    "{} logged in at {} (the doctor's own short connection)",
                    x.component, x.server
                ),
            );
            p
        }
        Err(ProbeError::Busy) => {
            out.ok(
                "component",
                format!(
                    "{} is already connected to {} (a running gateway): the secret is right",
                    x.component, x.server
                ),
            );
            if !rooms.is_empty() {
                out.warn(
                    "room",
                    "the linked rooms were not checked: the server lets only one connection \
                     log in as the component, and the running gateway has it",
                    "run `junction doctor` again while the gateway is stopped to check the rooms",
                );
            }
            return;
        }
        Err(e @ ProbeError::Refused(_)) => {
            return out.error(
                "component",
                format!("{}: {e}", x.component),
                format!(
                    "make [xmpp] secret the server's component_secret for {} (Prosody: \
                     Component \"{}\" with component_secret), and check the domain",
                    x.component, x.component
                ),
            )
        }
        Err(e @ ProbeError::Unreachable { .. }) => {
            return out.error(
                "component",
                e.to_string(),
                "check [xmpp] server (the server's component port, 5347 by default) and that \
                 the XMPP server runs with a component for this domain",
            )
        }
    };
    let listener = probe.listener();
    for room in rooms {
        match probe.room_features(room, TIMEOUT).await {
            Ok(Ok(features)) => {
                out.ok("room", format!("{room} exists"));
                if features.iter().any(|f| f == "urn:xmpp:mam:2") {
                    out.ok("archive", format!("{room} keeps an archive (XEP-0313)"));
                } else {
                    out.warn(
                        "archive",
                        format!("{room} keeps no archive (no urn:xmpp:mam:2): what is said there while the gateway is away is lost to the other networks"),
                        "turn on the room's archive (Prosody: mod_muc_mam, and the room's \
                         \"archive\" option or muc_log_by_default)",
                    );
                }
            }
            Ok(Err(condition)) if condition == "item-not-found" => {
                out.error(
                    "room",
                    format!("{room} does not exist (item-not-found)"),
                    "fix the room's JID in the bridge, or create the room (persistent, with an archive)",
                );
                continue;
            }
            Ok(Err(condition)) => {
                out.warn(
                    "room",
                    format!("{room} answered disco#info with {condition}"),
                    "check the room's JID and that the room lets the gateway in",
                );
                continue;
            }
            Err(e) => {
                out.warn("room", format!("{room}: {e}"), "check the MUC service");
                continue;
            }
        }
        let mut rank = None;
        for affiliation in ["owner", "admin"] {
            if let Ok(Ok(jids)) = probe.affiliations(room, affiliation, TIMEOUT).await {
                if jids.iter().any(|j| j.eq_ignore_ascii_case(&listener)) {
                    rank = Some(affiliation);
                    break;
                }
            }
        }
        match rank {
            Some(a) => out.ok("affiliation", format!("{listener} is {a} of {room}")),
            None => out.warn(
                "affiliation",
                format!("{listener} is neither owner nor admin of {room}: the gateway cannot set its subject, remove messages or kick there"),
                format!("make {listener} an admin of the room (room configuration → affiliations, or /affiliate admin {listener})"),
            ),
        }
    }
    probe.close().await;
}
