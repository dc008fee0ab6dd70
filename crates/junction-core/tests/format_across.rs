//! One message written on each network, read on the others.

use junction_core::format::{html, irc, styling};

/// The network whose users pills name in these tests.
fn pills() -> junction_core::NetworkId {
    junction_core::NetworkId::new("matrix")
}

#[test]
fn matrix_html_to_irc_and_xmpp() {
    let t = html::parse(
        "<mx-reply><blockquote>quoted</blockquote></mx-reply><b>bold</b> <i>it</i> \
         <code>x</code> <a href=\"https://e.org\">docs</a><script>alert(1)</script>",
        &pills(),
    );
    assert_eq!(
        irc::render(&t),
        "\x02bold\x02 \x1Dit\x1D \x11x\x11 docs (https://e.org)"
    );
    assert_eq!(styling::render(&t), "*bold* _it_ `x` docs (https://e.org)");
}

#[test]
fn irc_to_matrix_and_xmpp() {
    let t = irc::parse("\x02bold\x02 \x0304red\x03 <b>not markup</b>");
    assert_eq!(
        html::render(&t, &pills()),
        "<strong>bold</strong> red &lt;b&gt;not markup&lt;/b&gt;"
    );
    assert_eq!(styling::render(&t), "*bold* red <b>not markup</b>");
}

#[test]
fn xmpp_to_matrix_and_irc() {
    let t = styling::parse("*bold* ~gone~ <script>x</script>");
    assert_eq!(
        html::render(&t, &pills()),
        "<strong>bold</strong> <del>gone</del> &lt;script&gt;x&lt;/script&gt;"
    );
    assert_eq!(
        irc::render(&t),
        "\x02bold\x02 \x1Egone\x1E <script>x</script>"
    );
}
