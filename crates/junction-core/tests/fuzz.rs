//! Bounded property "fuzzing" of the format converters: Matrix HTML (the sanitiser), IRC
//! codes and XEP-0393 styling, read from anything and written back. Whatever comes in, the
//! readers never panic and the HTML writer never emits active markup. Each property runs a
//! fixed number of cases.

use junction_core::format::{html, irc, styling, RichText};
use proptest::prelude::*;

/// HTML-ish input: tags (allowed, dangerous and made up), attributes with and without
/// quotes, entities, comments, unbalanced and stray brackets, and text.
fn html_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "\\PC{0,12}",
        prop::sample::select(vec![
            "<b>",
            "</b>",
            "<i>",
            "</i>",
            "<strong>",
            "<em>",
            "<code>",
            "</code>",
            "<pre>",
            "</pre>",
            "<a href=\"https://example.org/\">",
            "<a href=\"javascript:alert(1)\">",
            "<a href='data:text/html,x'>",
            "</a>",
            "<br>",
            "<br/>",
            "<p>",
            "</p>",
            "<ul><li>",
            "</li></ul>",
            "<blockquote>",
            "</blockquote>",
            "<mx-reply>",
            "</mx-reply>",
            "<script>",
            "</script>",
            "<style>",
            "</style>",
            "<img src=x onerror=alert(1)>",
            "<iframe src=//evil>",
            "<svg onload=alert(1)>",
            "<font color=red>",
            "<span data-mx-color=\"#f00\">",
            "</span>",
            "<del>",
            "<u>",
            "<h1>",
            "<table><tr><td>",
            "&lt;",
            "&amp;",
            "&#0;",
            "&#x1F600;",
            "&bogus;",
            "<!--",
            "-->",
            "<![CDATA[",
            "]]>",
            "<",
            ">",
            "\"",
            "'",
            "<div onclick=\"x\">",
            "<a href=\"https://matrix.to/#/@alice:matrix.test\">",
            "<ol start=\"-1\">",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// Text with IRC control codes and XEP-0393 markers mixed in.
fn marked_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "\\PC{0,10}",
        prop::sample::select(vec![
            "\x02",
            "\x03",
            "\x034",
            "\x0304,12",
            "\x0399,99",
            "\x03,",
            "\x0f",
            "\x16",
            "\x1d",
            "\x1e",
            "\x1f",
            "\x11",
            "\x04ff0000",
            "\x01ACTION ",
            "\x01",
            "*",
            "_",
            "~",
            "`",
            "```",
            "```\n",
            "\n",
            "> ",
            ">",
            "\r\n",
            " ",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// No active content can survive the HTML writer. Text is escaped, so every `<` left in
/// the output opens a tag the writer made: each must be harmless, with no event handler
/// and no link other than http(s), mailto or matrix.to.
fn assert_inert(out: &str) -> Result<(), TestCaseError> {
    const ALLOWED: &[&str] = &[
        "b",
        "i",
        "u",
        "s",
        "strong",
        "em",
        "del",
        "strike",
        "code",
        "pre",
        "a",
        "br",
        "p",
        "blockquote",
        "ul",
        "ol",
        "li",
        "span",
        "font",
        "sup",
        "sub",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "caption",
        "details",
        "summary",
    ];
    let mut rest = out;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            return Err(TestCaseError::fail(format!("unclosed tag in {out:?}")));
        };
        let tag = &rest[start + 1..start + len];
        rest = &rest[start + len + 1..];
        let tag = tag.trim_start_matches('/').trim_end_matches('/');
        let mut words = tag.split_whitespace();
        let name = words.next().unwrap_or_default().to_ascii_lowercase();
        prop_assert!(
            ALLOWED.contains(&name.as_str()),
            "tag {:?} in {:?}",
            name,
            out
        );
        for attr in words {
            let lower = attr.to_ascii_lowercase();
            prop_assert!(
                !lower.starts_with("on") && !lower.starts_with("style"),
                "attribute {:?} in {:?}",
                attr,
                out
            );
            if let Some(v) = lower.strip_prefix("href=") {
                let v = v.trim_matches(['"', '\'']);
                prop_assert!(
                    v.starts_with("https://")
                        || v.starts_with("http://")
                        || v.starts_with("mailto:"),
                    "link {:?} in {:?}",
                    v,
                    out
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any HTML is read without a panic and written back inert, every time.
    #[test]
    fn html_sanitises_anything(input in html_soup()) {
        let tree = html::parse(&input);
        let out = html::render(&tree);
        assert_inert(&out)?;
        // Read back, the writer's own output is as inert.
        assert_inert(&html::render(&html::parse(&out)))?;
        let _ = tree.to_plain();
        let _ = irc::render(&tree);
        let _ = styling::render(&tree);
    }

    /// Any IRC line and any styled body are read without a panic, and every writer takes
    /// what they give; plain text typed on IRC or XMPP never becomes a tag on Matrix.
    #[test]
    fn irc_and_styling_never_panic(input in marked_text()) {
        for tree in [irc::parse(&input), styling::parse(&input)] {
            let out = html::render(&tree);
            assert_inert(&out)?;
            let _ = irc::render(&tree);
            let _ = styling::render(&tree);
            let _ = html::needs_html(&tree);
        }
    }

    /// Literal markup typed as text stays text: written to HTML it is escaped.
    #[test]
    fn typed_markup_is_escaped(input in html_soup()) {
        let out = html::render(&RichText::plain(input.clone()));
        prop_assert!(!out.contains('<') || input.is_empty() || !input.contains('<') || out.contains("&lt;"), "{:?}", out);
        assert_inert(&out)?;
        let back = html::parse(&out).to_plain();
        prop_assert_eq!(back.trim(), input.trim(), "escaped text should read back: {:?}", out);
    }
}
