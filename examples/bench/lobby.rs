//! The bench lobby: two bridges, one gateway.

use super::*;
use crate::taps::{tap, Taps};

pub(crate) struct Bench {
    pub(crate) servers: &'static Servers,
    pub(crate) slot: SlotGuard,
    pub(crate) taps: Taps,
    /// The gateway's store (the route loop's own handle): outbox depths are read from it.
    pub(crate) store: Arc<dyn Store>,
    /// Inject events as if the XMPP adapter had read them.
    pub(crate) xmpp_in: mpsc::Sender<Inbound>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) gateway: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub(crate) _adapters: tokio::task::JoinSet<()>,
    pub(crate) _data: tempfile::TempDir,
    // Fast bridge: MUC + IRC channel only.
    pub(crate) fast_muc: String,
    pub(crate) fast_chan: String,
    // Matrix bridge: Matrix room + MUC + IRC channel.
    pub(crate) mx_room: String,
    pub(crate) mx_muc: String,
    pub(crate) mx_chan: String,
    pub(crate) irc: IrcUser,
    pub(crate) xmpp: XmppUser,
    pub(crate) matrix: MatrixUser,
    /// The encrypting Matrix member who sends from Matrix (`--encrypted`).
    pub(crate) nio: Option<NioUser>,
    pub(crate) phase: u32,
}

/// The benchmark's gateway: no membership relaying, no per-sender limit (one user per network
/// sends as fast as the gateway takes it), IRC flood control out of the way, and two bridges.
#[allow(clippy::too_many_arguments)]
pub(crate) fn config_text(
    servers: &Servers,
    slot: &SlotGuard,
    irc_mode: &str,
    fast_muc: &str,
    fast_chan: &str,
    mx_room: &str,
    mx_muc: &str,
    mx_chan: &str,
) -> String {
    use junction_testkit::gateway;
    let irc = gateway::irc_section(servers.inspircd, slot)
        .replace("mode = \"puppet\"", &format!("mode = \"{irc_mode}\""))
        .replace("max_puppets = 50", "max_puppets = 20000")
        .replace("lines_per_second = 20.0", "lines_per_second = 1000000.0")
        .replace("burst = 50", "burst = 1000000");
    format!(
        "\n[gateway]\ndata_dir = \"data\"\nmembership = \"off\"\nrate_per_minute = 0\n{}{}{irc}{}{}",
        gateway::matrix_section(servers, slot),
        gateway::xmpp_section(servers, slot),
        gateway::bridge("fast", None, Some(fast_muc), Some(&format!("local/{fast_chan}"))),
        gateway::bridge(
            "mx",
            Some(mx_room),
            Some(mx_muc),
            Some(&format!("local/{mx_chan}"))
        ),
    )
}

impl Bench {
    pub(crate) async fn start(args: &Args) -> anyhow::Result<Bench> {
        let servers = servers().await?;
        let slot = slot().await?;
        let name = unique("jb");
        let matrix = MatrixUser::login(servers, "alice", "alicepw").await?;
        let mx_room = matrix
            .create_room(Some(&format!("{name}m")), true)
            .await
            .context("creating the Matrix room")?;
        if args.encrypted {
            matrix.enable_encryption(&mx_room).await?;
        }
        let fast_muc = format!("{name}f@{}", servers.xmpp.muc);
        let mx_muc = format!("{name}m@{}", servers.xmpp.muc);
        let fast_chan = format!("#{name}f");
        let mx_chan = format!("#{name}m");
        let xmpp = XmppUser::register(servers, &short(&unique("jbx")), "pw-bench").await?;
        let xnick = unique("bx");
        xmpp.join_muc(&fast_muc, &xnick).await?;
        xmpp.join_muc(&mx_muc, &xnick).await?;
        let irc = IrcUser::connect(servers.inspircd, &short(&unique("bi"))).await?;
        irc.join(&fast_chan).await?;
        irc.join(&mx_chan).await?;

        let data = tempfile::tempdir()?;
        let text = config_text(
            servers,
            &slot,
            &args.irc_mode,
            &fast_muc,
            &fast_chan,
            &mx_room,
            &mx_muc,
            &mx_chan,
        );
        let config = junction::config::parse(&text, "bench.toml", data.path(), &|_| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        // What `junction::serve` does, with taps between adapters and the route loop.
        std::fs::create_dir_all(&config.gateway.data_dir)?;
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(config.gateway.data_dir.join("store"))?);
        let links = gateway::initial_links(&config.bridges, store.as_ref())?;
        let router = Router::new(links)?;
        let nets = [
            NetworkId::new("matrix"),
            NetworkId::new("xmpp"),
            NetworkId::new("irc:local"),
        ];
        let metrics = Arc::new(Metrics::new(nets.clone()));
        let health = Arc::new(Health::new(nets.clone()));
        let shutdown = CancellationToken::new();
        let taps = Taps::default();
        let bench_store = store.clone();
        let mut hub = Hub::new(store.clone());
        let mut adapters = tokio::task::JoinSet::new();
        let m = config
            .section::<junction_matrix::config::MatrixSection>()
            .context("matrix section")?
            .config
            .clone();
        let (cx, _) = tap(
            hub.attach(nets[0].clone(), &router, &shutdown).context,
            &taps,
        );
        let mut matrix_adapter = MatrixAdapter::new(m).with_parallel_senders(args.parallel_senders);
        if args.encrypted {
            matrix_adapter = matrix_adapter.with_encryption(&config.gateway.data_dir, None);
        }
        adapters.spawn(gateway::run_adapter(matrix_adapter, cx));
        let x = config
            .section::<junction_xmpp::config::XmppSection>()
            .context("xmpp section")?
            .config
            .clone();
        let (cx, xmpp_in) = tap(
            hub.attach(nets[1].clone(), &router, &shutdown).context,
            &taps,
        );
        adapters.spawn(gateway::run_adapter(XmppAdapter::new(x), cx));
        let i = config
            .section::<junction_irc::IrcConfig>()
            .context("irc section")?
            .clone();
        let (cx, _) = tap(
            hub.attach(nets[2].clone(), &router, &shutdown).context,
            &taps,
        );
        adapters.spawn(gateway::run_adapter(IrcAdapter::new(i), cx));
        let parts = Parts {
            store,
            router,
            membership: config.gateway.membership,
            lurker_window: None,
            metrics,
            health: health.clone(),
            admin: junction::admin::Admin::new(&config),
            store_retry: config.gateway.store_retry,
            limits: config.gateway.limits,
            retention: config.gateway.retention.clone(),
            private_messages: config.gateway.private_messages,
        };
        let gateway = tokio::spawn(gateway::route(parts, hub, shutdown.clone()));

        let mut bench = Bench {
            servers,
            slot,
            taps,
            store: bench_store,
            xmpp_in,
            shutdown,
            gateway,
            _adapters: adapters,
            _data: data,
            fast_muc,
            fast_chan,
            mx_room,
            mx_muc,
            mx_chan,
            irc,
            xmpp,
            matrix,
            nio: None,
            phase: 0,
        };
        bench.wait_ready(&health).await?;
        if args.nio {
            // Joins once the gateway is in: its first message then shares the room key.
            let nio = NioUser::join(servers, &short(&unique("jbn")), "pw-bench", &bench.mx_room)
                .await
                .context("the nio member")?;
            bench.nio = Some(nio);
        }
        Ok(bench)
    }

    /// Until every adapter says it is connected and the IRC bot is in both channels.
    pub(crate) async fn wait_ready(&self, health: &Health) -> anyhow::Result<()> {
        junction_testkit::eventually(Duration::from_secs(90), "every adapter connected", || {
            let ok = health.is_healthy();
            async move { ok.then_some(()) }
        })
        .await?;
        let bot = junction_testkit::gateway::bot_nick(&self.slot);
        for chan in [&self.fast_chan, &self.mx_chan] {
            self.irc
                .wait_for(Duration::from_secs(60), |m| {
                    matches!(&m.command, irc_proto::Command::JOIN(c, _, _) if c.eq_ignore_ascii_case(chan))
                        && junction_testkit::clients::irc::source_nick(m)
                            .is_some_and(|n| n.eq_ignore_ascii_case(&bot))
                })
                .await
                .with_context(|| format!("the gateway's bot in {chan}"))?;
        }
        // The listener is in both MUCs once a message from each side crosses (the warm-up).
        Ok(())
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.gateway).await;
        Ok(())
    }

    /// Sends `n` tagged messages from `from` at `rate` per second (∞: as fast as possible),
    /// then waits (bounded) until `target` answered each. Returns the sample range and the
    /// send duration.
    pub(crate) async fn run(
        &mut self,
        from: Side,
        bridge: Bridge,
        target: &NetworkId,
        n: usize,
        rate: f64,
        wait: Duration,
    ) -> anyhow::Result<(std::ops::Range<usize>, Duration)> {
        self.phase += 1;
        let phase = self.phase;
        let first = self.taps.len();
        let start = Instant::now();
        for i in 0..n {
            if rate.is_finite() {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
            }
            let tag = format!("jb{phase}x{i}");
            let text = format!("bench {tag} the quick brown fox jumps over the lazy dog");
            let now = Instant::now();
            self.taps.register(tag, now);
            match from {
                Side::Irc => {
                    let chan = match bridge {
                        Bridge::Fast => &self.fast_chan,
                        Bridge::Mx => &self.mx_chan,
                    };
                    self.irc.privmsg(chan, &text)?;
                }
                Side::Xmpp => {
                    let muc = match bridge {
                        Bridge::Fast => &self.fast_muc,
                        Bridge::Mx => &self.mx_muc,
                    };
                    self.xmpp.send_groupchat(muc, &text)?;
                }
                Side::Matrix => match &mut self.nio {
                    Some(nio) => {
                        nio.send(&text).await?;
                    }
                    None => {
                        self.matrix.send_text(&self.mx_room, &text).await?;
                    }
                },
            }
        }
        let sending = start.elapsed();
        let range = first..first + n;
        let taps = self.taps.clone();
        let t = target.clone();
        let r = range.clone();
        let _ = junction_testkit::eventually(wait, "every delivery answered", || {
            let done = taps.answered(r.clone(), &t) == n;
            async move { done.then_some(()) }
        })
        .await;
        Ok((range, sending))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Irc,
    Xmpp,
    Matrix,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Bridge {
    Fast,
    Mx,
}

pub(crate) fn short(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(9)
        .collect()
}
