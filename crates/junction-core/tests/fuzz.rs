//! Bounded property "fuzzing" of the format converters: Matrix HTML (the sanitiser), IRC
//! codes and XEP-0393 styling, read from anything and written back. Whatever comes in, the
//! readers never panic and the HTML writer never emits active markup. Each property runs a
//! fixed number of cases.

use junction_core::format::{html, irc, styling, RichText};
use proptest::prelude::*;

/// The network whose users pills name in these tests.
fn pills() -> junction_core::NetworkId {
    junction_core::NetworkId::new("matrix")
}

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
        let tree = html::parse(&input, &pills());
        let out = html::render(&tree, &pills());
        assert_inert(&out)?;
        // Read back, the writer's own output is as inert.
        assert_inert(&html::render(&html::parse(&out, &pills()), &pills()))?;
        let _ = tree.to_plain();
        let _ = irc::render(&tree);
        let _ = styling::render(&tree);
    }

    /// Any IRC line and any styled body are read without a panic, and every writer takes
    /// what they give; plain text typed on IRC or XMPP never becomes a tag on Matrix.
    #[test]
    fn irc_and_styling_never_panic(input in marked_text()) {
        for tree in [irc::parse(&input), styling::parse(&input)] {
            let out = html::render(&tree, &pills());
            assert_inert(&out)?;
            let _ = irc::render(&tree);
            let _ = styling::render(&tree);
            let _ = html::needs_html(&tree);
        }
    }

    /// Literal markup typed as text stays text: written to HTML it is escaped.
    #[test]
    fn typed_markup_is_escaped(input in html_soup()) {
        let out = html::render(&RichText::plain(input.clone()), &pills());
        prop_assert!(!out.contains('<') || input.is_empty() || !input.contains('<') || out.contains("&lt;"), "{:?}", out);
        assert_inert(&out)?;
        let back = html::parse(&out, &pills()).to_plain();
        prop_assert_eq!(back.trim(), input.trim(), "escaped text should read back: {:?}", out);
    }
}

// ---- Hostile shapes: depth, cost and stack ----

use junction_core::format::{work, Span, MAX_DEPTH, MAX_INPUT_BYTES};

/// The stack the hostile-shape checks run on: far too small for any recursion that follows
/// the input's depth (a 10^5-deep input), ample for the bounded recursion the converters do.
const SMALL_STACK: usize = 256 * 1024;

/// Work allowed per input byte (readers, then every writer, plain text and a store round
/// trip of the tree): a generous constant, where a quadratic reader or a recursion per level
/// would need thousands per byte on these inputs.
const STEPS_PER_BYTE: u64 = 200;

/// Runs `f` on a thread with a [`SMALL_STACK`] and returns its result; a stack overflow
/// aborts the test binary, so getting a result proves the bound.
fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn_scoped(s, f)
            .expect("spawn")
            .join()
            .expect("no panic")
    })
}

/// An adversarial input of about `n` units: deep nesting, long delimiter runs, many children,
/// huge attributes, unmatched closers, entity and control-code runs.
fn hostile(shape: u8, n: usize) -> String {
    match shape % 14 {
        0 => ">".repeat(n),
        1 => "> ".repeat(n) + "x",
        2 => "<b>".repeat(n) + "x" + &"</b>".repeat(n),
        3 => "<b>".repeat(n) + &"</i>".repeat(n),
        4 => "*a ".repeat(n),
        5 => "*_~`".repeat(n),
        6 => "_a *b ~c ".repeat(n),
        7 => "<b>x</b>".repeat(n),
        8 => format!("<a href=\"https://e.org/{}\">x</a>", "a".repeat(n)),
        9 => "<script></script>".repeat(n),
        10 => "&".repeat(n) + ";",
        11 => "\x02\x1d\x1f\x1e\x11x".repeat(n),
        12 => "<blockquote><a href='https://e.org'><code>".repeat(n),
        _ => ">*_".repeat(n) + "\n" + &"> ".repeat(n),
    }
}

/// Reads `input` with every reader and writes each tree with every writer, checking the
/// depth bound, that the tree survives a JSON round trip (as a stored event does), and
/// returning the units of work done.
fn read_write_all(input: &str) -> Result<u64, String> {
    work::reset();
    for (reader, tree) in [
        ("html", html::parse(input, &pills())),
        ("irc", irc::parse(input)),
        ("styling", styling::parse(input)),
    ] {
        let depth = tree.depth();
        if depth > MAX_DEPTH {
            return Err(format!("{reader}: depth {depth}"));
        }
        let _ = html::render(&tree, &pills());
        let _ = irc::render(&tree);
        let _ = styling::render(&tree);
        let _ = tree.to_plain();
        let json = serde_json::to_string(&tree).map_err(|e| e.to_string())?;
        let back: RichText = serde_json::from_str(&json).map_err(|e| format!("{reader}: {e}"))?;
        if back != tree {
            return Err(format!("{reader}: round trip changed the tree"));
        }
    }
    Ok(work::steps())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Deep nesting (up to 10^5 levels), long delimiter runs, many children and huge
    /// attributes: no panic, no stack growth with the depth (a 256 KiB stack), trees no
    /// deeper than `MAX_DEPTH`, and work proportional to the input.
    #[test]
    fn hostile_shapes_are_bounded(shape in 0u8..14, n in prop_oneof![1usize..64, 1_000usize..100_001]) {
        let input = hostile(shape, n);
        let steps = on_small_stack(|| read_write_all(&input));
        let steps = steps.map_err(TestCaseError::fail)?;
        let len = input.len().min(MAX_INPUT_BYTES) as u64;
        prop_assert!(
            steps <= STEPS_PER_BYTE * (len + 1),
            "shape {} n {}: {} steps for {} bytes", shape, n, steps, len
        );
    }

    /// Whatever the reader, a body past the size cap is cut, never read whole.
    #[test]
    fn bodies_are_cut_at_the_size_cap(extra in 1usize..4096, c in prop::sample::select(vec!['x', 'é', '😀', '>'])) {
        let input: String = std::iter::repeat_n(c, MAX_INPUT_BYTES / c.len_utf8() + extra).collect();
        for tree in [html::parse(&input, &pills()), irc::parse(&input), styling::parse(&input)] {
            prop_assert!(tree.to_plain().matches(c).count() <= MAX_INPUT_BYTES / c.len_utf8());
        }
    }
}

/// The same delimiter run at twice the length costs about twice the work, not four times:
/// the readers are linear where `*a *a *a …` used to be quadratic.
#[test]
fn delimiter_runs_cost_linear_work() {
    for shape in [4u8, 5, 6, 0, 2, 3, 10] {
        let small = on_small_stack(|| read_write_all(&hostile(shape, 10_000))).expect("bounded");
        let large = on_small_stack(|| read_write_all(&hostile(shape, 20_000))).expect("bounded");
        assert!(
            large <= small * 3,
            "shape {shape}: {small} steps for 10k, {large} for 20k"
        );
    }
}

/// A tree built past the depth bound (not by a reader) is written by every writer on a small
/// stack, and `bounded` flattens it to `MAX_DEPTH` keeping its text.
#[test]
fn trees_built_too_deep_are_written_and_flattened() {
    let mut span = Span::Text("core".into());
    for i in 0..2_000 {
        span = match i % 4 {
            0 => Span::Bold(vec![Span::Text("b".into()), span]),
            1 => Span::Quote(vec![span]),
            2 => Span::Link {
                url: "https://e.org".into(),
                children: vec![span],
            },
            _ => Span::Italic(vec![span]),
        };
    }
    let tree = RichText { spans: vec![span] };
    // Cloning and dropping follow the depth, so they happen on this thread's stack.
    let mut mapped = tree.clone();
    let deep = tree.clone();
    on_small_stack(|| {
        assert_eq!(tree.depth(), 2_001);
        assert!(html::render(&tree, &pills()).contains("core"));
        assert!(irc::render(&tree).contains("core"));
        assert!(styling::render(&tree).contains("core"));
        assert!(tree.to_plain().contains("core"));
        junction_core::format::mention::map_mentions(&mut mapped, |_, _| {});
        let flat = deep.bounded();
        assert_eq!(flat.depth(), MAX_DEPTH);
        assert!(flat.to_plain().contains("core"));
        let json = serde_json::to_string(&flat).expect("encode");
        let back: RichText = serde_json::from_str(&json).expect("a bounded tree reads back");
        assert_eq!(back, flat);
    });
}

/// The quote markers past `MAX_QUOTE_DEPTH` stay in the text, nothing is lost.
#[test]
fn deep_quotes_keep_their_markers() {
    let input = ">".repeat(50_000) + " hi";
    let tree = on_small_stack(|| styling::parse(&input));
    assert!(tree.depth() <= junction_core::format::MAX_QUOTE_DEPTH + 1);
    let plain = tree.to_plain();
    assert!(plain.ends_with(" hi"), "{}", &plain[plain.len() - 10..]);
    assert!(plain.matches('>').count() >= 50_000);
}
