//! The servers' configuration files, rendered from the harness layout.
//!
//! Every file is rewritten on each start; a server whose files changed is restarted so
//! that what runs always matches what is written here. Data (Synapse's database, Prosody's
//! accounts) is kept between starts.

use super::{Layout, Slot, MATRIX_PORT, MUC_DOMAIN, SERVER_NAME, SLOTS, XMPP_DOMAIN};
use junction_core::format::regex_escape;
use std::fmt::Write as _;

/// Test-only secret for Synapse's shared-secret registration API.
pub(crate) const REGISTRATION_SHARED_SECRET: &str = "junction_testkit_registration_secret";

/// The rate limits Synapse has, every one lifted: tests and benchmarks send in bursts
/// from a handful of users and must never see `M_LIMIT_EXCEEDED`.
const RATE_LIMITS_FLAT: &[&str] = &[
    "rc_message",
    "rc_registration",
    "rc_joins_per_room",
    "rc_room_creation",
    "rc_media_create",
    "rc_profile",
    "rc_user_directory",
    "rc_3pid_validation",
    "rc_admin_redaction",
    "rc_reports",
    "rc_delayed_event_mgmt",
    "rc_third_party_invite",
    "rc_key_requests",
    "rc_registration_token_validity",
];

/// Rate limits that are split into sub-keys.
const RATE_LIMITS_NESTED: &[(&str, &[&str])] = &[
    ("rc_login", &["address", "account", "failed_attempts"]),
    ("rc_joins", &["local", "remote"]),
    ("rc_invites", &["per_room", "per_user", "per_issuer"]),
    ("rc_presence", &["per_user"]),
];

const NO_LIMIT: &str = "{per_second: 10000, burst_count: 100000}";

/// A YAML double-quoted scalar. Our values are plain ASCII paths and names; quoting keeps
/// a path with spaces or `#` from changing the document.
fn yq(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Lua string literal (double-quoted, backslash escapes).
fn lq(s: &str) -> String {
    yq(s)
}

/// Synapse's `homeserver.yaml`.
pub(crate) fn synapse(l: &Layout) -> String {
    let registrations: Vec<_> = (0..=SLOTS).map(|i| l.registration(i)).collect();
    synapse_on(l, MATRIX_PORT, &registrations)
}

/// Synapse's `homeserver.yaml` for a client listener on `port` with the appservice
/// registrations at `registrations`; the rest as in [`synapse`].
pub(crate) fn synapse_on(l: &Layout, port: u16, registrations: &[std::path::PathBuf]) -> String {
    let d = &l.synapse;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by junction-testkit on every start; edits are lost."
    );
    let _ = writeln!(s, "server_name: {}", yq(SERVER_NAME));
    let _ = writeln!(
        s,
        "public_baseurl: {}",
        yq(&format!("http://127.0.0.1:{port}/"))
    );
    let _ = writeln!(s, "listeners:");
    let _ = writeln!(s, "  - port: {port}");
    let _ = writeln!(s, "    bind_addresses: ['127.0.0.1']");
    let _ = writeln!(s, "    type: http");
    let _ = writeln!(s, "    tls: false");
    let _ = writeln!(s, "    x_forwarded: false");
    let _ = writeln!(s, "    resources:");
    let _ = writeln!(s, "      - names: [client]");
    let _ = writeln!(s, "        compress: false");
    let _ = writeln!(s, "database:");
    let _ = writeln!(s, "  name: sqlite3");
    let _ = writeln!(s, "  args:");
    let _ = writeln!(
        s,
        "    database: {}",
        yq(&d.join("homeserver.db").display().to_string())
    );
    let _ = writeln!(
        s,
        "media_store_path: {}",
        yq(&d.join("media").display().to_string())
    );
    let _ = writeln!(
        s,
        "signing_key_path: {}",
        yq(&l.signing_key().display().to_string())
    );
    let _ = writeln!(
        s,
        "registration_shared_secret: {}",
        yq(REGISTRATION_SHARED_SECRET)
    );
    let _ = writeln!(
        s,
        "macaroon_secret_key: {}",
        yq("junction_testkit_macaroon_secret")
    );
    let _ = writeln!(s, "form_secret: {}", yq("junction_testkit_form_secret"));
    let _ = writeln!(s, "report_stats: false");
    let _ = writeln!(s, "enable_registration: false");
    let _ = writeln!(s, "trusted_key_servers: []");
    let _ = writeln!(s, "suppress_key_server_warning: true");
    let _ = writeln!(s, "federation_domain_whitelist: []");
    let _ = writeln!(s, "presence:");
    let _ = writeln!(s, "  enabled: false");
    // What an appservice's own device needs to take part in encrypted rooms: to-device
    // messages, device-list changes and one-time-key counts pushed in its transactions.
    let _ = writeln!(s, "experimental_features:");
    let _ = writeln!(s, "  msc2409_to_device_messages_enabled: true");
    let _ = writeln!(s, "  msc3202_transaction_extensions: true");
    let _ = writeln!(s, "app_service_config_files:");
    for r in registrations {
        let _ = writeln!(s, "  - {}", yq(&r.display().to_string()));
    }
    for key in RATE_LIMITS_FLAT {
        let _ = writeln!(s, "{key}: {NO_LIMIT}");
    }
    for (key, subs) in RATE_LIMITS_NESTED {
        let _ = writeln!(s, "{key}:");
        for sub in *subs {
            let _ = writeln!(s, "  {sub}: {NO_LIMIT}");
        }
    }
    s
}

/// One slot's appservice registration. The bot is covered by `sender_localpart`; ghosts
/// and aliases by the exclusive `<prefix>` namespaces, which never overlap between slots.
///
/// Besides, each slot may create ordinary-looking aliases in a non-exclusive namespace
/// (Synapse lets an appservice create aliases only inside its namespaces): the demo slot 0
/// `#lobby.*:matrix.test` (the `#lobby:matrix.test` of bridges.toml), test slot N
/// `#jtN_.*:matrix.test` (e.g. `#jt3_lobby42:matrix.test`). Each slot gets only its own
/// pattern, so no slot is sent (or queues, while not running) the events of other slots'
/// rooms.
pub(crate) fn registration(slot: &Slot) -> String {
    let server = regex_escape(SERVER_NAME);
    let prefix = regex_escape(&slot.user_prefix);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by junction-testkit: test slot {}.",
        slot.index
    );
    let _ = writeln!(s, "id: {}", yq(&slot.as_id));
    let _ = writeln!(s, "url: {}", yq(&format!("http://{}", slot.listen)));
    let _ = writeln!(s, "as_token: {}", yq(&slot.as_token));
    let _ = writeln!(s, "hs_token: {}", yq(&slot.hs_token));
    let _ = writeln!(s, "sender_localpart: {}", yq(&slot.bot));
    let _ = writeln!(s, "rate_limited: false");
    let _ = writeln!(s, "receive_ephemeral: true");
    // Device data in transactions (MSC3202) and devices created by the appservice (MSC4190).
    let _ = writeln!(s, "org.matrix.msc3202: true");
    let _ = writeln!(s, "io.element.msc4190: true");
    let _ = writeln!(s, "namespaces:");
    let _ = writeln!(s, "  users:");
    let _ = writeln!(s, "    - exclusive: true");
    let _ = writeln!(s, "      regex: {}", sq(&format!("@{prefix}.*:{server}")));
    let _ = writeln!(s, "  aliases:");
    let _ = writeln!(s, "    - exclusive: true");
    let _ = writeln!(s, "      regex: {}", sq(&format!("#{prefix}.*:{server}")));
    let _ = writeln!(s, "    - exclusive: false");
    let _ = writeln!(
        s,
        "      regex: {}",
        sq(&format!(
            "#{}.*:{server}",
            regex_escape(&shared_alias_prefix(slot))
        ))
    );
    let _ = writeln!(s, "  rooms: []");
    s
}

/// The start of the ordinary aliases a slot may create (non-exclusive): `lobby` for the
/// demo slot, `jtN_` for test slot N.
pub(crate) fn shared_alias_prefix(slot: &Slot) -> String {
    if slot.index == 0 {
        "lobby".to_owned()
    } else {
        format!("jt{}_", slot.index)
    }
}

/// A YAML single-quoted scalar: backslashes are literal, `'` doubles.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Prosody's config: one VirtualHost, the MUC (with MAM) and one component per slot.
pub(crate) fn prosody(l: &Layout) -> String {
    prosody_on(l, super::XMPP_C2S_PORT, super::XMPP_COMPONENT_PORT)
}

/// Prosody's config with clients on `c2s` and components on `component`; the rest as in
/// [`prosody`].
pub(crate) fn prosody_on(l: &Layout, c2s: u16, component: u16) -> String {
    let d = &l.prosody;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "-- Written by junction-testkit on every start; edits are lost."
    );
    let _ = writeln!(
        s,
        "-- As root, Prosody refuses to run without run_as_root; prosody_user"
    );
    let _ = writeln!(
        s,
        "-- keeps prosodyctl from switching users when it writes account files."
    );
    let _ = writeln!(s, "run_as_root = true");
    let _ = writeln!(s, "prosody_user = \"root\"");
    let _ = writeln!(
        s,
        "data_path = {}",
        lq(&d.join("data").display().to_string())
    );
    let _ = writeln!(
        s,
        "certificates = {}",
        lq(&d.join("certs").display().to_string())
    );
    let _ = writeln!(
        s,
        "log = {{ {{ levels = {{ min = \"info\" }}, to = \"console\" }} }}"
    );
    // Prosody keeps Nagle's algorithm on by default: a stanza written while an earlier one is
    // unacknowledged waits for the peer's delayed ACK (up to 40 ms on Linux). A component
    // in a busy room gets its stanzas late by that much.
    let _ = writeln!(s, "network_settings = {{ nagle = false }}");
    let _ = writeln!(s, "interfaces = {{ \"127.0.0.1\" }}");
    let _ = writeln!(s, "c2s_ports = {{ {c2s} }}");
    let _ = writeln!(s, "c2s_direct_tls_ports = {{ }}");
    let _ = writeln!(s, "component_ports = {{ {component} }}");
    let _ = writeln!(s, "component_interfaces = {{ \"127.0.0.1\" }}");
    let _ = writeln!(s, "http_ports = {{ }}");
    let _ = writeln!(s, "https_ports = {{ }}");
    let _ = writeln!(
        s,
        "modules_enabled = {{ \"roster\"; \"saslauth\"; \"disco\"; \"ping\"; \"time\"; \"version\"; \
         \"uptime\"; \"carbons\"; \"pep\"; \"private\"; \"vcard_legacy\"; \"blocklist\"; }}"
    );
    let _ = writeln!(
        s,
        "modules_disabled = {{ \"s2s\"; \"s2s_auth_certs\"; \"offline\"; }}"
    );
    let _ = writeln!(s, "authentication = \"internal_plain\"");
    let _ = writeln!(
        s,
        "-- Plaintext c2s with PLAIN: loopback only, test accounts only."
    );
    let _ = writeln!(s, "c2s_require_encryption = false");
    let _ = writeln!(s, "s2s_require_encryption = false");
    let _ = writeln!(s, "allow_unencrypted_plain_auth = true");
    let _ = writeln!(s);
    let _ = writeln!(s, "VirtualHost {}", lq(XMPP_DOMAIN));
    let _ = writeln!(s);
    let _ = writeln!(s, "Component {} \"muc\"", lq(MUC_DOMAIN));
    // muc_moderation (XEP-0425) comes with Debian's prosody-modules, in Prosody's own
    // module directory, so no plugin_paths is needed.
    let _ = writeln!(
        s,
        "    modules_enabled = {{ \"muc_mam\"; \"muc_moderation\" }}"
    );
    let _ = writeln!(s, "    muc_log_by_default = true");
    let _ = writeln!(s, "    restrict_room_creation = false");
    let _ = writeln!(s, "    muc_room_locking = false");
    let _ = writeln!(s, "    muc_room_default_public = true");
    let _ = writeln!(s, "    muc_room_default_persistent = false");
    let _ = writeln!(s, "    muc_tombstones = false");
    for i in 0..=SLOTS {
        let slot = Slot::new(i);
        let _ = writeln!(s);
        let _ = writeln!(s, "Component {}", lq(&slot.component));
        let _ = writeln!(s, "    component_secret = {}", lq(&slot.component_secret));
    }
    s
}

/// InspIRCd 3's config. Comments are `#` (`<!--` is a syntax error); no `sasl` module
/// (it aborts startup without services); connection limits high enough for thousands of
/// puppets from 127.0.0.1; no DNS or ident, so registration is not delayed by timeouts.
pub(crate) fn inspircd(l: &Layout) -> String {
    let d = &l.inspircd;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by junction-testkit on every start; edits are lost."
    );
    let _ = writeln!(
        s,
        "<server name=\"irc.inspircd.test\" description=\"Junction test server\" network=\"JunctionTest\">"
    );
    let _ = writeln!(
        s,
        "<admin name=\"Junction tests\" nick=\"junction\" email=\"junction@irc.inspircd.test\">"
    );
    let _ = writeln!(
        s,
        "<bind address=\"127.0.0.1\" port=\"{}\" type=\"clients\">",
        super::INSPIRCD_PORT
    );
    let _ = writeln!(
        s,
        "<connect name=\"local\" allow=\"127.0.0.1\" hardsendq=\"10M\" softsendq=\"10M\" recvq=\"10M\" \
         threshold=\"1000000\" commandrate=\"100000000\" fakelag=\"off\" localmax=\"100000\" \
         globalmax=\"100000\" maxchans=\"1000\" resolvehostnames=\"no\" useident=\"no\" limit=\"100000\">"
    );
    let _ = writeln!(s, "<dns server=\"127.0.0.1\" timeout=\"1\">");
    let _ = writeln!(s, "<pid file=\"{}\">", d.join("inspircd.pid").display());
    let _ = writeln!(
        s,
        "<log method=\"file\" type=\"* -USERINPUT -USEROUTPUT\" level=\"default\" target=\"{}\">",
        l.log.join("inspircd-server.log").display()
    );
    let _ = writeln!(s, "<files motd=\"{}\">", d.join("motd.txt").display());
    for m in [
        "cap",
        "ircv3",
        "ircv3_accounttag",
        "ircv3_batch",
        "ircv3_capnotify",
        "ircv3_chghost",
        "ircv3_ctctags",
        "ircv3_echomessage",
        "ircv3_invitenotify",
        "ircv3_labeledresponse",
        "ircv3_msgid",
        "ircv3_servertime",
        "namesx",
        "uhnames",
        "setname",
        "monitor",
        "services_account",
        "chghost",
        "botmode",
        "alias",
        "chanhistory",
    ] {
        let _ = writeln!(s, "<module name=\"{m}\">");
    }
    // Channels with mode +H replay their last lines to whoever joins (the gateway's bot too).
    let _ = writeln!(
        s,
        "<chanhistory maxlines=\"100\" prefixmsg=\"no\" bots=\"yes\">"
    );
    s
}

/// ngIRCd's config. It drops root to `nobody` right after reading it, so there is no pid
/// file (the harness tracks the pid) and nothing it reads later may be root-only.
/// `MaxNickLength = 9` keeps the old-IRC nick limit, so nick trimming is exercised.
pub(crate) fn ngircd(l: &Layout) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by junction-testkit on every start; edits are lost."
    );
    let _ = writeln!(s, "[Global]");
    let _ = writeln!(s, "\tName = irc.ngircd.test");
    let _ = writeln!(s, "\tInfo = Junction test server");
    let _ = writeln!(s, "\tAdminInfo1 = Junction test server on 127.0.0.1");
    let _ = writeln!(s, "\tAdminInfo2 = Started by junction-testkit");
    let _ = writeln!(s, "\tAdminEMail = junction@irc.ngircd.test");
    let _ = writeln!(s, "\tListen = 127.0.0.1");
    let _ = writeln!(s, "\tPorts = {}", super::NGIRCD_PORT);
    let _ = writeln!(s, "\tMotdPhrase = Junction test server");
    let _ = writeln!(s, "\tPidFile =");
    let _ = writeln!(s, "\tServerUID = nobody");
    let _ = writeln!(s, "\tServerGID = nogroup");
    let _ = writeln!(s, "[Limits]");
    let _ = writeln!(s, "\tMaxConnections = 0");
    let _ = writeln!(s, "\tMaxConnectionsIP = 0");
    let _ = writeln!(s, "\tMaxJoins = 0");
    let _ = writeln!(s, "\tMaxNickLength = 9");
    let _ = writeln!(s, "\tMaxPenaltyTime = 0");
    let _ = writeln!(s, "[Options]");
    let _ = writeln!(s, "\tDNS = no");
    let _ = writeln!(s, "\tIdent = no");
    let _ = writeln!(s, "\tPAM = no");
    let _ = writeln!(s, "\tRequireAuthPing = no");
    let _ = writeln!(s, "\tIncludeDir = {}", l.ngircd.join("conf.d").display());
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn layout() -> Layout {
        Layout::new(Path::new("/srv/jt"))
    }

    #[test]
    fn synapse_lists_every_registration_and_lifts_limits() {
        let y = synapse(&layout());
        for i in 0..=SLOTS {
            assert!(y.contains(&format!("/srv/jt/synapse/appservices/slot{i}.yaml")));
        }
        assert!(y.contains("server_name: \"matrix.test\""));
        assert!(y.contains("rc_message: {per_second: 10000, burst_count: 100000}"));
        assert!(y.contains("rc_login:\n  address: {per_second"));
        assert!(!y.contains("default_room_version"));
    }

    #[test]
    fn registration_namespaces_are_escaped_and_single_quoted() {
        let r = registration(&Slot::new(3));
        assert!(r.contains("id: \"junction-t3\"\n"), "{r}");
        assert!(r.contains("url: \"http://127.0.0.1:9013\"\n"), "{r}");
        assert!(r.contains("sender_localpart: \"jt3bot\"\n"), "{r}");
        assert!(r.contains("regex: '@_jt3_.*:matrix\\.test'\n"), "{r}");
        assert!(r.contains("regex: '#_jt3_.*:matrix\\.test'\n"), "{r}");
        let demo = registration(&Slot::new(0));
        assert!(
            demo.contains("regex: '@_junction_.*:matrix\\.test'\n"),
            "{demo}"
        );
        assert!(demo.contains("url: \"http://127.0.0.1:9009\"\n"), "{demo}");
    }

    #[test]
    fn registration_has_a_non_exclusive_alias_namespace_per_slot() {
        let r = registration(&Slot::new(3));
        assert!(
            r.contains("    - exclusive: false\n      regex: '#jt3_.*:matrix\\.test'\n"),
            "{r}"
        );
        // The demo slot may create bridges.toml's `#lobby:matrix.test`.
        let demo = registration(&Slot::new(0));
        assert!(
            demo.contains("    - exclusive: false\n      regex: '#lobby.*:matrix\\.test'\n"),
            "{demo}"
        );
    }

    #[test]
    fn prosody_has_mam_and_moderation_on_the_muc_and_every_component() {
        let p = prosody(&layout());
        assert!(p.contains(
            "Component \"conference.xmpp.test\" \"muc\"\n    \
             modules_enabled = { \"muc_mam\"; \"muc_moderation\" }"
        ));
        assert!(p.contains("Component \"bridge.xmpp.test\"\n    component_secret = "));
        for i in 1..=SLOTS {
            assert!(p.contains(&format!("Component \"t{i}.bridge.xmpp.test\"\n")));
        }
        assert!(p.contains("muc_room_locking = false"));
    }

    #[test]
    fn inspircd_uses_hash_comments_and_no_sasl() {
        let c = inspircd(&layout());
        assert!(!c.contains("<!--"));
        assert!(!c.contains("\"sasl\""));
        assert!(c.contains("localmax=\"100000\" globalmax=\"100000\""));
    }

    #[test]
    fn ngircd_keeps_nine_character_nicks() {
        let c = ngircd(&layout());
        assert!(c.contains("\tMaxNickLength = 9\n"));
        assert!(c.contains("\tMaxConnectionsIP = 0\n"));
        assert!(c.contains("\tPidFile =\n"));
    }
}
