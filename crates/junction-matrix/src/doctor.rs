//! `junction doctor` on Matrix: the homeserver answers, knows the as_token (the registration
//! is loaded), lets the appservice act as its ghosts and create the linked aliases it will
//! create (the registration's namespaces), reaches the appservice (the ping), and gives the
//! bot power in each linked room.
//!
//! It uses the adapter's [`Client`] with one attempt per call, not the adapter, and changes
//! nothing; when nothing listens on `[matrix] listen` it answers the homeserver's ping itself
//! for the ping's length.

use crate::config::MatrixConfig;
use crate::connection::{Client, ClientError, Method};
use crate::ids::{ghost_user_id, path_segment};
use crate::power;
use axum::http::{HeaderMap, StatusCode};
use junction_core::doctor::{Findings, TIMEOUT};
use junction_core::NetworkId;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const REGISTRATION_FIX: &str = "write the registration with `junction registration -c FILE > \
     junction-registration.yaml`, list it in the homeserver's app_service_config_files \
     (Synapse) and restart the homeserver";

/// The name of the ghost of each network the namespace check asks about (IRC nicks never
/// start with `-`; were it a real ghost, the answer would tell the same).
const PROBE_NAME: &str = "-junction-doctor";

/// Runs the Matrix checks of `m`, the bot's power in each of `rooms` (the Matrix rooms the
/// config's bridges link), whether the registration covers the ghosts of `networks` (every
/// configured network instance), adding one finding per check to `out`.
pub async fn check(
    m: &MatrixConfig,
    rooms: &[String],
    networks: &[NetworkId],
    out: &mut Findings<'_>,
) {
    let stop = CancellationToken::new();
    let client = Client::new(&m.homeserver, m.as_token.clone(), stop.clone()).with_attempts(1);
    let bot = format!("@{}:{}", m.bot, m.server_name);
    match tokio::time::timeout(
        TIMEOUT,
        client.request(Method::GET, "/_matrix/client/versions", &[], None),
    )
    .await
    {
        // Any HTTP answer will do: a homeserver may refuse an unknown token even here.
        Ok(Ok(_)) => out.ok("homeserver", format!("{} answers", m.homeserver)),
        Ok(Err(e)) if e.status().is_some() => {
            out.ok("homeserver", format!("{} answers", m.homeserver))
        }
        Ok(Err(e)) => return out.error(
            "homeserver",
            format!("cannot reach the homeserver at {}: {e}", m.homeserver),
            "check [matrix] homeserver (the client-server API URL) and that the homeserver runs",
        ),
        Err(_) => {
            return out.error(
                "homeserver",
                format!("the homeserver at {} did not answer", m.homeserver),
                "check [matrix] homeserver and that the homeserver runs",
            )
        }
    }
    match client
        .request(Method::GET, "/_matrix/client/v3/account/whoami", &[], None)
        .await
    {
        Ok(v) => {
            let who = v.get("user_id").and_then(Value::as_str).unwrap_or("");
            if who == bot {
                out.ok(
                    "as_token",
                    format!("the homeserver knows the appservice (its bot is {bot})"),
                );
            } else {
                return out.error(
                    "as_token",
                    format!("the as_token belongs to {who}, not to the bot {bot}"),
                    "make [matrix] bot the registration's sender_localpart, or use the as_token \
                     of this gateway's registration",
                );
            }
        }
        Err(e) if e.errcode() == Some("M_UNKNOWN_TOKEN") || e.status() == Some(401) => {
            return out.error(
                "as_token",
                "the homeserver refuses the as_token: the registration is not loaded, or its \
                 as_token differs from [matrix] as_token",
                REGISTRATION_FIX,
            )
        }
        Err(e) => {
            return out.error(
                "as_token",
                format!("whoami as the appservice failed: {e}"),
                REGISTRATION_FIX,
            )
        }
    }
    ghost_namespace(m, &client, networks, out).await;
    alias_namespace(m, &client, rooms, out).await;
    ping(m, &client, out).await;
    for room in rooms {
        power_in(m, &client, &bot, room, out).await;
    }
    stop.cancel();
}

/// The fix for a namespace the registration lacks.
fn namespace_fix(what: &str) -> String {
    format!(
        "{what}, or write the registration again with `junction registration -c FILE > \
         junction-registration.yaml` (it covers the ghosts and the linked aliases) and restart \
         the homeserver"
    )
}

/// The users namespace: the homeserver lets the appservice act as a ghost of each other
/// network. Asked as `whoami` on behalf of a ghost nobody is: Synapse answers "cannot
/// masquerade as this user" when the user is outside the appservice's namespaces, and "has
/// not registered this user" when it is inside (the ghost simply does not exist yet).
async fn ghost_namespace(
    m: &MatrixConfig,
    client: &Client,
    networks: &[NetworkId],
    out: &mut Findings<'_>,
) {
    let mut probes: Vec<String> = networks
        .iter()
        .filter(|n| n.as_str() != "matrix")
        .map(|n| ghost_user_id(&m.user_prefix, n, PROBE_NAME, &m.server_name))
        .collect();
    if probes.is_empty() {
        probes.push(format!("@{}doctor:{}", m.user_prefix, m.server_name));
    }
    let mut outside = Vec::new();
    for probe in &probes {
        let query = [("user_id", probe.clone())];
        let answer = tokio::time::timeout(
            TIMEOUT,
            client.request(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                &query,
                None,
            ),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(ClientError::Http { message, .. })) if message.contains("not registered") => {}
            Ok(Err(ClientError::Http { message, .. })) if message.contains("masquerade") => {
                outside.push(probe.clone())
            }
            Ok(Err(e)) => {
                return out.warn(
                    "namespace",
                    format!(
                        "could not tell whether the registration covers the ghosts ({probe}): {e}"
                    ),
                    format!(
                        "check that the registration's users namespace matches @{}.*",
                        m.user_prefix
                    ),
                )
            }
            Err(_) => {
                return out.warn(
                    "namespace",
                    "the homeserver did not answer whether the registration covers the ghosts",
                    "run the doctor again",
                )
            }
        }
    }
    if outside.is_empty() {
        out.ok(
            "namespace",
            format!(
                "the registration covers the ghosts (@{}...:{})",
                m.user_prefix, m.server_name
            ),
        );
    } else {
        out.error(
            "namespace",
            format!(
                "the registration's users namespace does not cover the ghosts ({}): the \
                 homeserver will not let the gateway act as them, so nobody from the other \
                 networks can speak in the Matrix rooms",
                outside.join(", ")
            ),
            namespace_fix(&format!(
                "make [matrix] user_prefix the prefix of the registration's users regex \
                 (@{}.* for this config)",
                m.user_prefix
            )),
        );
    }
}

/// The aliases namespace: each linked alias on our server that is still free, which the
/// gateway creates at start, is one the homeserver lets the appservice make. Asked by
/// deleting it as the appservice: Synapse refuses with `M_EXCLUSIVE` an alias outside the
/// appservice's namespaces, and otherwise deletes nothing, the alias being free.
async fn alias_namespace(
    m: &MatrixConfig,
    client: &Client,
    rooms: &[String],
    out: &mut Findings<'_>,
) {
    let ours = format!(":{}", m.server_name);
    for alias in rooms
        .iter()
        .filter(|r| r.starts_with('#') && r.ends_with(&ours))
    {
        // Only a free alias is the gateway's to create (and safe to ask about this way).
        match client.resolve_alias(alias).await {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => continue,
        }
        let path = format!("/_matrix/client/v3/directory/room/{}", path_segment(alias));
        let answer =
            tokio::time::timeout(TIMEOUT, client.request(Method::DELETE, &path, &[], None)).await;
        match answer {
            Ok(Ok(_)) => out.ok(
                "namespace",
                format!("the registration lets the gateway create {alias}"),
            ),
            Ok(Err(e)) if e.errcode() == Some("M_EXCLUSIVE") => out.error(
                "namespace",
                format!(
                    "{alias} does not exist and the registration's aliases namespace does not \
                     cover it, so the gateway cannot create the room"
                ),
                namespace_fix(&format!(
                    "add {alias} to the registration's aliases namespace (exclusive: false)"
                )),
            ),
            Ok(Err(e)) => out.warn(
                "namespace",
                format!("could not tell whether the gateway may create {alias}: {e}"),
                "create the room with that alias, or check the registration's aliases namespace",
            ),
            Err(_) => out.warn(
                "namespace",
                format!("the homeserver did not answer whether the gateway may create {alias}"),
                "run the doctor again",
            ),
        }
    }
}

/// Asks the homeserver to ping the appservice. When nothing listens on `[matrix] listen`
/// (no gateway running), the doctor listens there itself for the ping's length.
async fn ping(m: &MatrixConfig, client: &Client, out: &mut Findings<'_>) {
    let own = match tokio::net::TcpListener::bind(m.listen).await {
        Ok(listener) => Some(answer_pings(listener, m.hs_token.expose().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => {
            out.warn(
                "ping",
                format!(
                    "cannot listen on {} to answer the homeserver's ping: {e}",
                    m.listen
                ),
                "make [matrix] listen an address of this host",
            );
            return;
        }
    };
    let who = if own.is_some() {
        "the doctor (no gateway is running)"
    } else {
        "what listens there (a running gateway)"
    };
    let ping = |attempt: u32| {
        let txn = format!("doctor-{}-{attempt}", junction_core::clock::now_ms());
        async move { tokio::time::timeout(TIMEOUT * 2, client.ping(&m.id, &txn)).await }
    };
    let mut result = ping(1).await;
    if matches!(&result, Ok(Err(e)) if e.errcode() == Some("M_CONNECTION_FAILED")) {
        // Once more: Synapse may have tried a connection it kept from an earlier listener
        // on the same address (a doctor run a moment before), which is gone; it does not
        // retry that itself and answers 502.
        result = ping(2).await;
    }
    if let Some(stop) = own {
        stop.cancel();
    }
    let e = match result {
        Ok(Ok(ms)) => {
            return out.ok(
                "ping",
                format!(
                    "the homeserver reaches the appservice at {} in {ms} ms; {who} answered",
                    m.listen
                ),
            )
        }
        Ok(Err(e)) => e,
        Err(_) => ClientError::Transport("no answer".into()),
    };
    match e.errcode() {
        Some("M_URL_NOT_SET") => out.error(
            "ping",
            "the registration has no url, so the homeserver sends the gateway nothing",
            REGISTRATION_FIX,
        ),
        Some("M_CONNECTION_FAILED" | "M_CONNECTION_TIMEOUT") => out.error(
            "ping",
            format!("the homeserver cannot reach the appservice ({e}); {who} was listening on {}", m.listen),
            "make the registration's url reach [matrix] listen from the homeserver's host \
             (address, port, firewall), then rewrite and reload the registration",
        ),
        Some("M_BAD_STATUS") => out.error(
            "ping",
            format!("the appservice refused the homeserver's ping ({e}): the registration's hs_token differs from [matrix] hs_token"),
            REGISTRATION_FIX,
        ),
        Some("M_FORBIDDEN") => out.error(
            "ping",
            format!("the homeserver refused the ping for id {:?}: the registration's id differs", m.id),
            "make [matrix] id the registration's id",
        ),
        Some("M_UNRECOGNIZED") => out.warn(
            "ping",
            "the homeserver does not know the appservice ping (Matrix 1.7), so whether it reaches the gateway is not checked",
            "send a message in a linked room once the gateway runs and see that it crosses",
        ),
        _ => out.error(
            "ping",
            format!("the ping failed: {e}"),
            "check that the homeserver can reach [matrix] listen",
        ),
    }
}

/// Serves the appservice ping on `listener` until the token is cancelled: 200 with the
/// right hs_token, 403 otherwise (so a wrong token shows as the homeserver's M_BAD_STATUS).
fn answer_pings(listener: tokio::net::TcpListener, hs_token: String) -> CancellationToken {
    let stop = CancellationToken::new();
    let token = std::sync::Arc::new(hs_token);
    let app = axum::Router::new().route(
        "/_matrix/app/v1/ping",
        axum::routing::post(move |headers: HeaderMap| {
            let token = token.clone();
            async move {
                let given = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                // The listener goes in a moment: the homeserver must not keep the connection
                // for its next request (it would find it closed and answer that with 502).
                let close = [(axum::http::header::CONNECTION, "close")];
                if given == Some(token.as_str()) {
                    (StatusCode::OK, close, axum::Json(json!({})))
                } else {
                    (
                        StatusCode::FORBIDDEN,
                        close,
                        axum::Json(json!({"errcode": "M_FORBIDDEN", "error": "bad hs_token"})),
                    )
                }
            }
        }),
    );
    let done = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { done.cancelled().await })
            .await;
    });
    stop
}

/// The bot's power in one linked room: redact, kick and topic, as the gateway uses them.
async fn power_in(
    m: &MatrixConfig,
    client: &Client,
    bot: &str,
    room: &str,
    out: &mut Findings<'_>,
) {
    let room_id = if room.starts_with('#') {
        match client.resolve_alias(room).await {
            Ok(Some(id)) => id,
            Ok(None) if room.ends_with(&format!(":{}", m.server_name)) => {
                return out.ok(
                    "power",
                    format!("{room} does not exist yet: the gateway creates it at start, with the bot as its admin"),
                )
            }
            Ok(None) => {
                return out.error(
                    "power",
                    format!("{room} does not exist"),
                    "fix the alias in the bridge, or create the room",
                )
            }
            Err(e) => {
                return out.warn(
                    "power",
                    format!("could not resolve {room}: {e}"),
                    "check the alias",
                )
            }
        }
    } else {
        room.to_owned()
    };
    let levels = match client.state(&room_id, "m.room.power_levels", "").await {
        Ok(Some(l)) => l,
        Ok(None) => Value::Object(Default::default()),
        Err(e) if e.status() == Some(403) || e.status() == Some(404) => {
            return out.warn(
                "power",
                format!("the bot {bot} is not in {room}, so its power there is not known"),
                format!(
                    "invite {bot} to the room (the gateway joins it at start when it is public)"
                ),
            )
        }
        Err(e) => {
            return out.warn(
                "power",
                format!("could not read the power levels of {room}: {e}"),
                "check the room",
            )
        }
    };
    if let Ok(Some(create)) = client.state_event(&room_id, "m.room.create", "").await {
        if power::is_privileged_creator(&create, bot) {
            return out.ok(
                "power",
                format!("the bot created {room} and has every power there"),
            );
        }
    }
    let level = |v: Option<&Value>| v.and_then(Value::as_i64);
    let mine = power::user_level(&levels, bot);
    let state_default = level(levels.get("state_default")).unwrap_or(50);
    let needs = [
        ("redact", level(levels.get("redact")).unwrap_or(50)),
        ("kick", level(levels.get("kick")).unwrap_or(50)),
        (
            "set the topic",
            level(levels.get("events").and_then(|e| e.get("m.room.topic")))
                .unwrap_or(state_default),
        ),
    ];
    let missing: Vec<String> = needs
        .iter()
        .filter(|(_, need)| mine < *need)
        .map(|(what, need)| format!("{what} (needs {need})"))
        .collect();
    if missing.is_empty() {
        out.ok(
            "power",
            format!("the bot (level {mine}) may redact, kick and set the topic in {room}"),
        );
    } else {
        let most = needs.iter().map(|(_, n)| *n).max().unwrap_or(50);
        out.warn(
            "power",
            format!("the bot (level {mine}) cannot {} in {room}", missing.join(", ")),
            format!("give {bot} power level {most} or more in the room (room settings → Roles & Permissions)"),
        );
    }
}
