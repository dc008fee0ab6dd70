//! Bans at the gateway: IRC masks with wildcards in every part, accounts, nick changes, and a
//! store that fails (bans fail closed).

use super::tests::{replied, root, setup};
use super::*;
use junction_store::{Call, Faulty, StoreError};

fn irc(nick: &str, user_host: &str) -> Sender {
    Sender::new(
        UserRef::new("irc:local", junction_irc::inbound::nick_user_id(nick)),
        nick,
    )
    .with_address(format!("{nick}!{user_host}"))
}

fn with_account(nick: &str, account: &str, user_host: &str) -> Sender {
    Sender::new(
        UserRef::new("irc:local", junction_irc::inbound::account_user_id(account)),
        nick,
    )
    .with_address(format!("{nick}!{user_host}"))
}

#[test]
fn host_masks_match_with_wildcards_in_every_part() {
    let (a, mut r, s, _) = setup();
    let o = a.handle(&root(), "root", "ban local/*!*@evil.host", &mut r, &s);
    replied(&o, "Banned");
    assert_eq!(
        a.check_ban(&s, &irc("anyone", "~x@EVIL.host")),
        BanCheck::Banned
    );
    assert_eq!(
        a.check_ban(&s, &with_account("acct", "someone", "~y@evil.host")),
        BanCheck::Banned,
        "an account holder on that host too"
    );
    assert_eq!(
        a.check_ban(&s, &irc("anyone", "~x@good.host")),
        BanCheck::Clear
    );
    a.handle(&root(), "root", "ban local/*!~sp?m*@*.isp.test", &mut r, &s);
    assert_eq!(
        a.check_ban(&s, &irc("new", "~spam1@a.isp.test")),
        BanCheck::Banned
    );
    assert_eq!(
        a.check_ban(&s, &irc("new", "~ham@a.isp.test")),
        BanCheck::Clear
    );
}

#[test]
fn a_nick_ban_follows_the_person_through_a_nick_change() {
    let (a, mut r, s, _) = setup();
    a.handle(&root(), "root", "ban local/troll", &mut r, &s);
    // Seen under the banned nick: the ban learns their user@host...
    assert_eq!(
        a.check_ban(&s, &irc("troll", "~t@host.test")),
        BanCheck::Banned
    );
    // ...so the new nick is banned too, and so is it after a restart (it is stored).
    assert_eq!(
        a.check_ban(&s, &irc("innocent", "~t@host.test")),
        BanCheck::Banned
    );
    let (fresh, _, _, _) = setup();
    assert_eq!(
        fresh.check_ban(&s, &irc("innocent2", "~t@host.test")),
        BanCheck::Banned
    );
    // Someone else on another host is not.
    assert_eq!(
        a.check_ban(&s, &irc("innocent", "~i@other.test")),
        BanCheck::Clear
    );
    // An account holder taking the banned nick is refused while they wear it.
    assert_eq!(
        a.check_ban(&s, &with_account("troll", "acct", "~a@third.test")),
        BanCheck::Banned
    );
    let o = a.handle(&root(), "root", "unban local/troll", &mut r, &s);
    replied(&o, "Unbanned");
    assert_eq!(
        a.check_ban(&s, &irc("innocent", "~t@host.test")),
        BanCheck::Clear
    );
}

#[test]
fn account_bans_name_the_account_not_the_nick() {
    let (a, mut r, s, _) = setup();
    let o = a.handle(&root(), "root", "ban local/$a:mallory", &mut r, &s);
    replied(&o, "Banned");
    assert_eq!(
        a.check_ban(&s, &with_account("whatever", "mallory", "~m@h.test")),
        BanCheck::Banned
    );
    // The nick `mallory` without the account is someone else.
    assert_eq!(
        a.check_ban(&s, &irc("mallory", "~n@other.test")),
        BanCheck::Clear
    );
}

/// A store whose every read of the key/value tables fails.
fn failing() -> Faulty {
    Faulty::new(|call| {
        matches!(call, Call::Method("kv_get" | "kv_scan"))
            .then(|| StoreError::Backend("disk gone".into()))
    })
}

#[test]
fn bans_fail_closed() {
    let (a, _, _, _) = setup();
    let s = failing();
    for sender in [
        irc("anyone", "~a@h.test"),
        Sender::new(UserRef::new("matrix", "@x:matrix.test"), "x"),
        Sender::new(UserRef::new("xmpp", "occupant:abc"), "x"),
    ] {
        assert_eq!(a.check_ban(&s, &sender), BanCheck::Unknown, "{sender:?}");
        assert!(a.is_banned(&s, &sender.user));
    }
}
