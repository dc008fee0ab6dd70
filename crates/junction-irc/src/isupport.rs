//! The server's RPL_ISUPPORT (005) parameters that the adapter obeys.

/// What the server announced (defaults per RFC 2812 / modern practice until it says otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ISupport {
    /// Longest nick.
    pub nicklen: usize,
    /// Longest line including CRLF.
    pub linelen: usize,
    /// `rfc1459`, `ascii`, `strict-rfc1459`...
    pub casemapping: String,
    /// Channel prefix characters.
    pub chantypes: String,
    /// Membership prefix symbols (`@+`...).
    pub prefix_symbols: String,
    /// Network name.
    pub network: Option<String>,
    /// Most messages one `CHATHISTORY` request returns (IRCv3 chathistory; 0: no limit
    /// given). None: the server did not announce CHATHISTORY.
    pub chathistory: Option<usize>,
}

impl Default for ISupport {
    fn default() -> Self {
        Self {
            nicklen: 9,
            linelen: 512,
            casemapping: "rfc1459".into(),
            chantypes: "#&".into(),
            prefix_symbols: "@+".into(),
            network: None,
            chathistory: None,
        }
    }
}

impl ISupport {
    /// Reads the tokens of one 005 line (params without the target nick and the trailing
    /// "are supported by this server"). Unknown or malformed tokens are ignored.
    pub fn apply<'a>(&mut self, tokens: impl IntoIterator<Item = &'a str>) {
        for token in tokens {
            if token.contains(' ') {
                continue; // the trailing human-readable text
            }
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            match key {
                "NICKLEN" | "MAXNICKLEN" => {
                    if let Ok(n) = value.parse::<usize>() {
                        if n > 0 && (key == "NICKLEN" || self.nicklen == 9) {
                            self.nicklen = n;
                        }
                    }
                }
                "LINELEN" => {
                    if let Ok(n) = value.parse::<usize>() {
                        if n >= 512 {
                            self.linelen = n;
                        }
                    }
                }
                "CASEMAPPING" if !value.is_empty() => self.casemapping = value.into(),
                "CHANTYPES" => self.chantypes = value.into(),
                "PREFIX" => {
                    if let Some((_, symbols)) = value.split_once(')') {
                        self.prefix_symbols = symbols.into();
                    }
                }
                "NETWORK" if !value.is_empty() => self.network = Some(value.into()),
                "CHATHISTORY" => self.chathistory = Some(value.parse().unwrap_or(0)),
                _ => {}
            }
        }
    }

    /// Folds `s` to lower case under the server's CASEMAPPING, for comparing nicks/channels.
    pub fn fold(&self, s: &str) -> String {
        let rfc = self.casemapping.contains("rfc1459");
        let strict = self.casemapping == "strict-rfc1459";
        s.chars()
            .map(|c| match c {
                '[' if rfc => '{',
                ']' if rfc => '}',
                '\\' if rfc => '|',
                '~' if rfc && !strict => '^',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspircd_style_tokens() {
        let mut i = ISupport::default();
        i.apply([
            "AWAYLEN=200",
            "CASEMAPPING=ascii",
            "CHANTYPES=#",
            "NICKLEN=30",
            "PREFIX=(qaohv)~&@%+",
            "NETWORK=Test",
            "are supported by this server",
        ]);
        assert_eq!(i.nicklen, 30);
        assert_eq!(i.casemapping, "ascii");
        assert_eq!(i.chantypes, "#");
        assert_eq!(i.prefix_symbols, "~&@%+");
        assert_eq!(i.network.as_deref(), Some("Test"));
        assert_eq!(i.linelen, 512);
    }

    #[test]
    fn ngircd_style_and_garbage() {
        let mut i = ISupport::default();
        i.apply([
            "NICKLEN=9",
            "CASEMAPPING=rfc1459",
            "LINELEN=abc",
            "NICKLEN=",
            "=",
            "",
        ]);
        assert_eq!(i.nicklen, 9);
        assert_eq!(i.fold("Alice[m]"), "alice{m}");
        i.apply(["LINELEN=1024"]);
        assert_eq!(i.linelen, 1024);
    }
}
