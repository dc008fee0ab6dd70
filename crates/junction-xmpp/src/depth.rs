//! A bound on element depth in what the server sends, applied to the bytes before any
//! element tree is built.
//!
//! The component stream is parsed by rxml and built into `minidom` trees (and typed
//! stanzas) by tokio-xmpp; building, converting and dropping those trees recurses once per
//! nesting level. A groupchat message nesting `<x>` tens of thousands deep (well under the
//! server's stanza size limit) would overflow the stack and abort the whole gateway, and a
//! bigger stack only moves the threshold. So the bytes read from the server pass through
//! [`DepthLimited`] first: a linear lexer that tracks element depth and drops every element
//! deeper than [`MAX_STANZA_DEPTH`] with all it contains (start tag, text, children, end
//! tag). The stanza stays well-formed, only the deep subtree is gone; everything else
//! passes byte for byte.
//!
//! Written by hand: no maintained crate bounds depth before the tree is built (rxml and
//! minidom have no depth option, and tokio-xmpp offers no hook between its parser and the
//! tree builder). The lexer needs only what tells tags apart in a well-formed stream:
//! start, end and empty tags, quoted attribute values (`'…'` and `"…"`), comments,
//! processing instructions, CDATA sections and declarations. It keeps O(1) state (the
//! depth and the construct it is in), looks at each byte once, and holds back at most the
//! one `<` whose meaning the next byte decides, so chunk boundaries may fall anywhere. What
//! it mis-reads is malformed XML, which the parser behind it refuses anyway.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::xmlstream::{initiate_stream, PendingFeaturesRecv, StreamHeader, Timeouts};

/// The deepest element kept, counting the `<stream:stream>` element as depth 1 and a
/// stanza as depth 2: 32, so a stanza keeps 30 levels below itself. The deepest nesting
/// the adapter reads is a MUC archive result (message, result, forwarded, message, and
/// an XHTML-IM body below it), far above this bound.
pub const MAX_STANZA_DEPTH: usize = 32;

/// Bytes read from the server per read (the filter's own buffer, fixed in size).
const READ_BUF: usize = 8 * 1024;

/// Where the lexer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Character data between tags.
    Text,
    /// After `<`, which is held back until the next byte says what it opens.
    Lt,
    /// Inside a start or empty-element tag; `quote` is the open quote of an attribute
    /// value, `slash` whether the last byte outside quotes was `/`.
    Start { quote: Option<u8>, slash: bool },
    /// Inside an end tag.
    End,
    /// After `<!`.
    Bang,
    /// After `<!-`.
    CommentOpen,
    /// Inside a comment, with the count of `-` just seen (up to 2).
    Comment { dashes: u8 },
    /// Inside a CDATA section (`<![…`), with the count of `]` just seen (up to 2).
    CData { brackets: u8 },
    /// Inside a processing instruction; `q` whether the last byte was `?`.
    Pi { q: bool },
    /// Inside another declaration (`<!DOCTYPE …>`), up to `>`.
    Decl,
}

/// Up to two bytes of output for one byte of input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Out {
    bytes: [u8; 2],
    len: u8,
}

impl Out {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    /// The bytes to pass on.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The depth-bounding lexer: feed it the stream's bytes in order, pass on what it returns.
#[derive(Debug)]
pub struct DepthFilter {
    max: usize,
    lex: Lex,
    /// Depth of the element whose content is current (1 inside the stream, 2 inside a
    /// stanza).
    depth: usize,
    /// Whether the bytes of the current markup construct are kept.
    keep: bool,
    /// Whether this stanza's cut was logged already.
    logged: bool,
    /// Stanzas that lost a subtree.
    cut: Arc<AtomicU64>,
}

impl DepthFilter {
    /// A filter keeping elements down to depth `max` (the stream element being depth 1),
    /// counting each stanza it cuts in `cut`.
    pub fn new(max: usize, cut: Arc<AtomicU64>) -> Self {
        Self {
            max,
            lex: Lex::Text,
            depth: 0,
            keep: true,
            logged: false,
            cut,
        }
    }

    /// Takes one byte; returns the bytes to pass on (none, the byte, or a held `<` and
    /// the byte).
    pub fn step(&mut self, b: u8) -> Out {
        let mut out = Out::default();
        match self.lex {
            Lex::Text => {
                if b == b'<' {
                    self.lex = Lex::Lt;
                } else if self.depth <= self.max {
                    out.push(b);
                }
            }
            Lex::Lt => {
                // What follows `<` at the current depth: an end tag closes the element
                // at this depth, markup sits in it, a start tag opens one level deeper.
                let here = self.depth <= self.max;
                match b {
                    b'/' => self.enter(Lex::End, here, &mut out, b),
                    b'?' => self.enter(Lex::Pi { q: false }, here, &mut out, b),
                    b'!' => self.enter(Lex::Bang, here, &mut out, b),
                    _ => {
                        self.depth = self.depth.saturating_add(1);
                        if self.depth == 2 {
                            self.logged = false;
                        }
                        let keep = self.depth <= self.max;
                        if !keep && self.depth == self.max + 1 {
                            self.note_cut();
                        }
                        let start = Lex::Start {
                            quote: None,
                            slash: false,
                        };
                        self.keep = keep;
                        self.lex = start;
                        if keep {
                            out.push(b'<');
                        }
                        // The byte after `<` is the tag's first byte: lex it as such.
                        self.in_start(b, None, &mut out);
                    }
                }
            }
            Lex::Start { quote, .. } => self.in_start(b, quote, &mut out),
            Lex::End => {
                self.emit(b, &mut out);
                if b == b'>' {
                    self.depth = self.depth.saturating_sub(1);
                    self.lex = Lex::Text;
                }
            }
            Lex::Bang => {
                self.emit(b, &mut out);
                self.lex = match b {
                    b'-' => Lex::CommentOpen,
                    b'[' => Lex::CData { brackets: 0 },
                    b'>' => Lex::Text,
                    _ => Lex::Decl,
                };
            }
            Lex::CommentOpen => {
                self.emit(b, &mut out);
                self.lex = match b {
                    b'-' => Lex::Comment { dashes: 0 },
                    b'>' => Lex::Text,
                    _ => Lex::Decl,
                };
            }
            Lex::Comment { dashes } => {
                self.emit(b, &mut out);
                self.lex = match b {
                    b'-' => Lex::Comment {
                        dashes: (dashes + 1).min(2),
                    },
                    b'>' if dashes >= 2 => Lex::Text,
                    _ => Lex::Comment { dashes: 0 },
                };
            }
            Lex::CData { brackets } => {
                self.emit(b, &mut out);
                self.lex = match b {
                    b']' => Lex::CData {
                        brackets: (brackets + 1).min(2),
                    },
                    b'>' if brackets >= 2 => Lex::Text,
                    _ => Lex::CData { brackets: 0 },
                };
            }
            Lex::Pi { q } => {
                self.emit(b, &mut out);
                self.lex = match b {
                    b'?' => Lex::Pi { q: true },
                    b'>' if q => Lex::Text,
                    _ => Lex::Pi { q: false },
                };
            }
            Lex::Decl => {
                self.emit(b, &mut out);
                if b == b'>' {
                    self.lex = Lex::Text;
                }
            }
        }
        out
    }

    /// Feeds `input`, appending what passes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            out.extend_from_slice(self.step(b).as_slice());
        }
    }

    /// Starts a construct after a held `<`: both bytes pass if it is kept.
    fn enter(&mut self, lex: Lex, keep: bool, out: &mut Out, b: u8) {
        self.lex = lex;
        self.keep = keep;
        if keep {
            out.push(b'<');
            out.push(b);
        }
    }

    fn emit(&self, b: u8, out: &mut Out) {
        if self.keep {
            out.push(b);
        }
    }

    /// A byte inside a start tag.
    fn in_start(&mut self, b: u8, quote: Option<u8>, out: &mut Out) {
        self.emit(b, out);
        let slash = matches!(self.lex, Lex::Start { slash: true, .. });
        self.lex = match (quote, b) {
            (Some(q), _) if b == q => Lex::Start {
                quote: None,
                slash: false,
            },
            (Some(q), _) => Lex::Start {
                quote: Some(q),
                slash: false,
            },
            (None, b'"' | b'\'') => Lex::Start {
                quote: Some(b),
                slash: false,
            },
            (None, b'>') => {
                if slash {
                    // An empty element: it closed at once.
                    self.depth = self.depth.saturating_sub(1);
                }
                Lex::Text
            }
            (None, _) => Lex::Start {
                quote: None,
                slash: b == b'/',
            },
        };
    }

    /// The current stanza loses a subtree: counted and logged once per stanza.
    fn note_cut(&mut self) {
        if !self.logged {
            self.logged = true;
            self.cut.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max_depth = self.max,
                "xmpp: an incoming stanza nests elements deeper than the bound; the deeper \
                 elements are dropped"
            );
        }
    }
}

/// A stream whose reads pass through a [`DepthFilter`]; writes go straight through.
#[derive(Debug)]
pub struct DepthLimited<S> {
    inner: S,
    filter: DepthFilter,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// The second byte of an output pair that did not fit the caller's buffer.
    spill: Option<u8>,
}

impl<S> DepthLimited<S> {
    /// Wraps `inner`, keeping elements down to [`MAX_STANZA_DEPTH`] and counting each
    /// stanza it cuts in `cut`.
    pub fn new(inner: S, cut: Arc<AtomicU64>) -> Self {
        Self::with_max(inner, MAX_STANZA_DEPTH, cut)
    }

    /// Wraps `inner`, keeping elements down to depth `max`.
    pub fn with_max(inner: S, max: usize, cut: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            filter: DepthFilter::new(max, cut),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            pos: 0,
            end: 0,
            spill: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DepthLimited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = out.filled().len();
            if let Some(b) = this.spill.take() {
                out.put_slice(&[b]);
            }
            while this.pos < this.end && out.remaining() > 0 {
                let o = this.filter.step(this.buf[this.pos]);
                this.pos += 1;
                for &b in o.as_slice() {
                    if out.remaining() > 0 {
                        out.put_slice(&[b]);
                    } else {
                        this.spill = Some(b);
                    }
                }
            }
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // All read so far was dropped (or nothing was read yet): read more.
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.pos = 0;
            this.end = n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DepthLimited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connects over plain TCP like tokio-xmpp's `TcpServerConnector`, with the server's bytes
/// read through [`DepthLimited`]. tokio-xmpp takes the transport from a connector, which
/// is the one place to put the filter under its parser.
#[derive(Debug, Clone)]
pub(crate) struct DepthBoundConnector {
    /// Where the server is.
    pub dns: DnsConfig,
    /// Stanzas cut, across connections.
    pub cut: Arc<AtomicU64>,
}

impl ServerConnector for DepthBoundConnector {
    type Stream = BufStream<DepthLimited<TcpStream>>;

    async fn connect(
        &self,
        jid: &tokio_xmpp::jid::Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<
        (
            PendingFeaturesRecv<Self::Stream>,
            sasl::common::ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let tcp = self.dns.resolve().await?;
        // Stanzas are small and go out one by one: with Nagle's algorithm, one written while
        // the last is unacknowledged waits for the server's delayed ACK (up to 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "Could not turn off Nagle's algorithm.");
        }
        let stream = BufStream::new(DepthLimited::new(tcp, self.cut.clone()));
        let header = StreamHeader {
            to: Some(Cow::Borrowed(jid.domain().as_str())),
            from: None,
            id: None,
        };
        Ok((
            initiate_stream(stream, ns, header, timeouts).await?,
            sasl::common::ChannelBinding::None,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    fn filter(max: usize) -> DepthFilter {
        DepthFilter::new(max, Arc::default())
    }

    fn run(max: usize, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        filter(max).feed(input, &mut out);
        out
    }

    /// A reader handing out the given chunks one per read.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            // An empty read means the end: empty chunks are skipped.
            while this.0.front().is_some_and(Vec::is_empty) {
                this.0.pop_front();
            }
            if let Some(mut c) = this.0.pop_front() {
                let n = c.len().min(out.remaining());
                out.put_slice(&c[..n]);
                if n < c.len() {
                    this.0.push_front(c.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads all of `chunks` through [`DepthLimited`] with reads of `read` bytes.
    fn through_reader(max: usize, chunks: Vec<Vec<u8>>, read: usize) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = DepthLimited::with_max(Chunks(chunks.into()), max, Arc::default());
            let mut all = Vec::new();
            let mut buf = vec![0u8; read];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            all
        })
    }

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' from='bridge.xmpp.test' id='abc'>";

    fn deep(n: usize, tag: &str) -> String {
        format!(
            "<message from='lobby@conference.xmpp.test/mallory' to='bridge.xmpp.test' type='groupchat' id='m1'><body>{tag}</body>{}{}</message>",
            "<x a='1'>".repeat(n),
            "</x>".repeat(n)
        )
    }

    #[test]
    fn ordinary_stanzas_pass_byte_identical() {
        let s = format!(
            "{HEADER}<handshake/><message type='groupchat' from='r@c/n&apos;x' id=\"a>b\"><body>1 &lt; 2 &amp;&gt; x</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='s' by='r@c'/><html xmlns='http://jabber.org/protocol/xhtml-im'>\
             <body xmlns='http://www.w3.org/1999/xhtml'><p>a<b>b<i>c</i></b></p></body></html></message>\
             <iq type='result' id='1'/><!-- c --><![CDATA[<x>]]><?pi x?>\n<presence/></stream:stream>"
        );
        assert_eq!(run(MAX_STANZA_DEPTH, s.as_bytes()), s.as_bytes());
    }

    #[test]
    fn deep_subtrees_are_dropped_and_the_rest_kept() {
        // Depth 1 stream, 2 message, 3 a, 4 b: with max 3 the <b> subtree goes.
        let s = "<s><m><a>x<b y='>'>z<c/>w</b>v</a><a2/></m></s>";
        assert_eq!(run(3, s.as_bytes()), b"<s><m><a>xv</a><a2/></m></s>");
        // Empty elements below the bound go; a comment in a kept element stays, and
        // what looks like a tag in it is no tag.
        let s = "<s><m><a><b/><!-- <q> --></a></m></s>";
        assert_eq!(run(3, s.as_bytes()), b"<s><m><a><!-- <q> --></a></m></s>");
        // A quoted value holding tag-like bytes in a kept element.
        let s = "<s><m k=\"</m>\" j='<a>'><a/></m></s>";
        assert_eq!(run(3, s.as_bytes()), s.as_bytes());
    }

    #[test]
    fn each_cut_stanza_is_counted_once() {
        let cut = Arc::new(AtomicU64::new(0));
        let mut f = DepthFilter::new(MAX_STANZA_DEPTH, cut.clone());
        let mut out = Vec::new();
        let two_cuts = format!(
            "<message>{}{}{}{}</message>",
            "<x>".repeat(40),
            "</x>".repeat(40),
            "<y>".repeat(40),
            "</y>".repeat(40)
        );
        f.feed(HEADER.as_bytes(), &mut out);
        f.feed(two_cuts.as_bytes(), &mut out);
        f.feed(deep(100, "b").as_bytes(), &mut out);
        f.feed(b"<message><body>ok</body></message>", &mut out);
        assert_eq!(cut.load(Ordering::Relaxed), 2);
    }

    /// The nesting depth of `el` and its descendants, without recursion.
    fn depth_of(el: &minidom::Element) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(el, 1)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            stack.extend(e.children().map(|c| (c, d + 1)));
        }
        deepest
    }

    #[test]
    fn a_hundred_thousand_levels_pass_on_a_small_stack_and_parse() {
        let input = format!("{HEADER}{}", deep(100_000, "still here"));
        let out = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let chunks = input.as_bytes().chunks(1000).map(<[u8]>::to_vec).collect();
                let out = through_reader(MAX_STANZA_DEPTH, chunks, 4096);
                // The stanza alone, as the stream parser would see it under the header.
                let text = String::from_utf8(out).expect("utf-8");
                let stanza = &text[HEADER.len()..];
                let stanza =
                    stanza.replacen("<message ", "<message xmlns='jabber:component:accept' ", 1);
                let el: minidom::Element = stanza.parse().expect("parses");
                assert_eq!(
                    el.get_child("body", "jabber:component:accept")
                        .map(minidom::Element::text)
                        .as_deref(),
                    Some("still here")
                );
                // Stanza is depth 2 in the stream; its subtree keeps max - 1 levels.
                assert_eq!(depth_of(&el), MAX_STANZA_DEPTH - 1);
                text.len()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(out < 2_000, "{out} bytes left");
    }

    /// Shapes that stress the lexer: deep nesting, quotes with markup inside, comments,
    /// CDATA and processing instructions at any depth.
    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "<a>",
            "</a>",
            "<b x='>/<' y=\"'\"/>",
            "<c\n z = \"\"\t>",
            "</c >",
            "text &amp; ]]> -->",
            "<!-- <a> -- - -->",
            "<![CDATA[ <a> ]] ]]>",
            "<?pi ?? <a> ?>",
            "<e/>",
            "<d k='&apos;'>",
            "</d>",
            "/>",
            ">",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any input split anywhere, read through the stream wrapper with small and
        /// large reads, gives the same bytes as the whole input fed at once.
        #[test]
        fn splits_do_not_change_the_output(
            pieces in prop::collection::vec(piece(), 0..80),
            cuts in prop::collection::vec(0usize..2000, 0..12),
            max in 1usize..6,
            read in prop::sample::select(vec![1usize, 2, 3, 7, 64, 8192]),
        ) {
            let input = pieces.concat().into_bytes();
            let whole = run(max, &input);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in cuts {
                chunks.push(input[from..c].to_vec());
                from = c;
            }
            chunks.push(input[from..].to_vec());
            prop_assert_eq!(through_reader(max, chunks, read), whole.clone());
            // Byte by byte through the lexer too.
            let mut f = filter(max);
            let mut out = Vec::new();
            for b in &input {
                f.feed(std::slice::from_ref(b), &mut out);
            }
            prop_assert_eq!(out, whole);
        }

        /// Well-formed input no deeper than the bound passes unchanged; output is never
        /// longer than the input.
        #[test]
        fn shallow_input_passes_unchanged(depths in prop::collection::vec(0usize..6, 0..40)) {
            let mut s = String::from("<s>");
            for d in depths {
                s.push_str(&"<a k='&lt;/a&gt;'>".repeat(d));
                s.push_str("t<!--c--><e/>");
                s.push_str(&"</a>".repeat(d));
            }
            s.push_str("</s>");
            prop_assert_eq!(run(7, s.as_bytes()), s.as_bytes());
            prop_assert!(run(3, s.as_bytes()).len() <= s.len());
        }
    }
}
