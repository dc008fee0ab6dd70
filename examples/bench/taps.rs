//! Taps: timestamps of every message as it crosses the adapter/route seam.

use super::*;

/// When one target saw the message.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Leg {
    pub(crate) dispatched: Option<Instant>,
    pub(crate) delivered: Option<Instant>,
    pub(crate) failed: bool,
}

/// One tagged message.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) sent: Instant,
    pub(crate) inbound: Option<Instant>,
    pub(crate) legs: HashMap<NetworkId, Leg>,
}

#[derive(Default)]
pub(crate) struct TapState {
    pub(crate) by_tag: HashMap<String, usize>,
    pub(crate) by_event: HashMap<EventId, usize>,
    pub(crate) samples: Vec<Sample>,
}

/// Shared by every tap task and the load drivers.
#[derive(Clone, Default)]
pub(crate) struct Taps(pub(crate) Arc<Mutex<TapState>>);

/// The tag inside a bench message body (`jb<phase>x<seq>`).
pub(crate) fn tag_of(text: &str) -> Option<&str> {
    text.split_whitespace().find(|w| w.starts_with("jb"))
}

impl Taps {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a message about to be sent; returns its index.
    pub(crate) fn register(&self, tag: String, sent: Instant) -> usize {
        let mut s = self.lock();
        let i = s.samples.len();
        s.samples.push(Sample {
            sent,
            inbound: None,
            legs: HashMap::new(),
        });
        s.by_tag.insert(tag, i);
        i
    }

    pub(crate) fn on_inbound(&self, ev: &Event, at: Instant) {
        let EventKind::Message(m) = &ev.kind else {
            return;
        };
        let text = m.body.to_plain();
        let Some(tag) = tag_of(&text) else { return };
        let mut s = self.lock();
        if let Some(&i) = s.by_tag.get(tag) {
            s.by_event.insert(ev.id.clone(), i);
            let smp = &mut s.samples[i];
            smp.inbound.get_or_insert(at);
        }
    }

    pub(crate) fn on_delivery(&self, d: &Delivery, at: Instant) {
        let mut s = self.lock();
        if let Some(&i) = s.by_event.get(&d.event.id) {
            let leg = s.samples[i]
                .legs
                .entry(d.target.network.clone())
                .or_default();
            leg.dispatched.get_or_insert(at);
        }
    }

    pub(crate) fn on_delivered(&self, d: &Delivered, at: Instant) {
        let mut s = self.lock();
        if let Some(&i) = s.by_event.get(&d.event) {
            let leg = s.samples[i]
                .legs
                .entry(d.target.network.clone())
                .or_default();
            leg.delivered.get_or_insert(at);
            leg.failed |= d.outcome.is_err();
        }
    }

    pub(crate) fn samples(&self, range: std::ops::Range<usize>) -> Vec<Sample> {
        self.lock().samples[range].to_vec()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().samples.len()
    }

    /// How many of `range` have an answer (delivered or failed) from `target`.
    pub(crate) fn answered(&self, range: std::ops::Range<usize>, target: &NetworkId) -> usize {
        self.lock().samples[range]
            .iter()
            .filter(|s| s.legs.get(target).is_some_and(|l| l.delivered.is_some()))
            .count()
    }
}

/// Puts taps between an adapter's context and the route loop.
pub(crate) fn tap(mut cx: AdapterContext, taps: &Taps) -> (AdapterContext, mpsc::Sender<Inbound>) {
    let real_in = cx.inbound.clone();
    let (tin, mut rin) = mpsc::channel::<Inbound>(1024);
    cx.inbound = tin.clone();
    let t = taps.clone();
    tokio::spawn(async move {
        while let Some(i) = rin.recv().await {
            t.on_inbound(&i.event, Instant::now());
            if real_in.send(i).await.is_err() {
                break;
            }
        }
    });
    let (tdel, rdel) = mpsc::channel::<Delivery>(64);
    let mut real_del = std::mem::replace(&mut cx.deliveries, rdel);
    let t = taps.clone();
    tokio::spawn(async move {
        while let Some(d) = real_del.recv().await {
            t.on_delivery(&d, Instant::now());
            if tdel.send(d).await.is_err() {
                break;
            }
        }
    });
    let real_done = cx.delivered.clone();
    let (tdone, mut rdone) = mpsc::unbounded_channel::<Delivered>();
    cx.delivered = tdone;
    let t = taps.clone();
    tokio::spawn(async move {
        while let Some(d) = rdone.recv().await {
            t.on_delivered(&d, Instant::now());
            if real_done.send(d).is_err() {
                break;
            }
        }
    });
    (cx, tin)
}
