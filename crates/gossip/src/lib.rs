//! Membership and dissemination between the coordinators of a federation: SWIM (foca) over
//! UDP, where every datagram travels in an envelope signed with the sending coordinator's
//! key and carrying its certificate chain. A datagram that does not verify against the
//! federation root, or does not come from a coordinator certificate, is dropped and
//! counted before foca sees it.
//!
//! On top of membership, each coordinator publishes one [`MemberState`] (its addresses,
//! node summaries, datastore catalog) with a Lamport version; newer versions replace older
//! ones as they spread with foca's piggy-backed broadcasts. The coordinator runs periodic
//! anti-entropy over gRPC and feeds what it learns back with [`Gossip::merge`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collective_core::{Principal, Role, SharedClock};
use collective_pki::{CertInfo, TlsIdentity, TokenSigner, TokenVerifier, fingerprint};
pub use collective_proto::v1::MemberState;
use foca::{Foca, Invalidates, OwnedNotification, PostcardCodec, Timer};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Datagrams older (or further in the future) than this are dropped as replays.
const MAX_SKEW_MS: u64 = 60_000;
const ENVELOPE_VERSION: u8 = 1;
const SIGNING_CONTEXT: &[u8] = b"collective-gossip-v1";
/// Foca's own packet budget; the envelope (certificate chain, signature) comes on top.
const FOCA_PACKET: usize = 1400;
const MAX_DATAGRAM: usize = 16 * 1024;
/// While we know nobody, announce to the bootstrap peers this often.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("cannot listen for gossip on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("invalid gossip setting: {0}")]
    Config(String),
}

/// How gossip runs; every duration has a LAN default in the coordinator's config.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    pub listen: SocketAddr,
    /// The address other members send to (defaults to `listen`).
    pub advertise: SocketAddr,
    /// Gossip addresses of members to join through.
    pub bootstrap: Vec<SocketAddr>,
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute before it is declared down.
    pub suspect_timeout: Duration,
    /// Where to remember members between restarts (so a restarted member finds them).
    pub peers_file: Option<PathBuf>,
    /// The time of day, for state versions and envelope freshness.
    pub clock: SharedClock,
}

/// What gossip says about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Alive,
    Suspect,
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerView {
    pub member: String,
    pub state: PeerState,
    /// Last authenticated datagram from it (ms since the epoch), 0 if never.
    pub last_seen_ms: u64,
    pub gossip_addr: Option<SocketAddr>,
    /// When it said it was shutting down cleanly (ms since the epoch), 0 if it did not:
    /// down and stopped is a planned absence, not a failure.
    pub stopped_ms: u64,
}

impl PeerView {
    /// Alive, suspect, down, or stopped for a member down after a clean shutdown.
    pub fn health(&self) -> collective_proto::v1::MemberHealth {
        use collective_proto::v1::MemberHealth;
        match self.state {
            PeerState::Down if self.stopped_ms > 0 => MemberHealth::Stopped,
            PeerState::Down => MemberHealth::Down,
            PeerState::Suspect => MemberHealth::Suspect,
            PeerState::Alive => MemberHealth::Alive,
        }
    }

    /// "alive", "suspect", "down", or "stopped", for logs.
    pub fn label(&self) -> &'static str {
        self.health().name()
    }
}

/// Gossip counters, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Bytes of the datagrams counted in `sent` and `received` (envelopes included).
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Datagrams that failed authentication (unsigned, bad signature, foreign root, not a
    /// coordinator, replayed).
    pub dropped: AtomicU64,
    /// Times a member was declared down (a member that is alive and counted here is flapping).
    pub members_down: AtomicU64,
}

/// The identity foca gossips about: the member, its gossip address and a bump that a
/// restart raises so the new process wins over the old one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Id {
    member: String,
    addr: SocketAddr,
    bump: u64,
}

/// Foca keys members by their gossip address: datagrams are addressed to it, and bootstrap
/// peers are known only by it. A restarted member (same address, higher bump) wins.
impl foca::Identity for Id {
    type Addr = SocketAddr;
    fn renew(&self) -> Option<Self> {
        Some(Id {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u8,
    chain: Vec<Vec<u8>>,
    sent_ms: u64,
    payload: Vec<u8>,
    sig: Vec<u8>,
}

fn signed_bytes(sent_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + 8 + payload.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(&sent_ms.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Whether `incoming` replaces `held`, what we know of the same member: only a strictly
/// higher version does, so equal versions are stable whatever order they arrive in and a
/// stale state never replaces a newer one.
fn replaces(held: Option<&MemberState>, incoming: &MemberState) -> bool {
    held.is_none_or(|h| incoming.version > h.version)
}

/// The version our own state gets next: the time of day, but always above the last one
/// (so it still rises when the clock steps back), and never wrapping.
fn next_version(prev: u64, now_ms: u64) -> u64 {
    now_ms.max(prev.saturating_add(1))
}

struct Shared {
    me: String,
    clock: SharedClock,
    states: Mutex<HashMap<String, MemberState>>,
    peers: Mutex<HashMap<String, PeerView>>,
    counters: Counters,
    /// Other members' states changed since they were last saved.
    dirty: AtomicBool,
    /// Members removed from the federation: their datagrams and states are dropped.
    removed: Mutex<HashSet<String>>,
    /// When we started leaving (clean shutdown), 0 while we run.
    stopped_ms: AtomicU64,
}

impl Shared {
    fn new(me: &str, clock: SharedClock) -> Shared {
        Shared {
            me: me.to_string(),
            clock,
            states: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            dirty: AtomicBool::new(false),
            removed: Mutex::new(HashSet::new()),
            stopped_ms: AtomicU64::new(0),
        }
    }

    fn lock_states(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemberState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerView>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn is_removed(&self, member: &str) -> bool {
        self.removed.lock().unwrap_or_else(|p| p.into_inner()).contains(member)
    }

    /// When `member` last said it was shutting down cleanly (0: it did not).
    fn stopped_ms(&self, member: &str) -> u64 {
        self.lock_states().get(member).map_or(0, |s| s.stopped_ms)
    }

    /// Raises the version of our own state and returns it encoded for broadcast.
    fn bump_own(&self) -> Option<Vec<u8>> {
        self.bump_own_with(|_| {})
    }

    /// Changes our own state, raises its version and returns it encoded for broadcast.
    fn bump_own_with(&self, change: impl FnOnce(&mut MemberState)) -> Option<Vec<u8>> {
        let mut states = self.lock_states();
        let mine = states.get_mut(&self.me)?;
        change(mine);
        mine.version = next_version(mine.version, self.clock.now_ms());
        let item = StateItem {
            member: mine.member.clone(),
            version: mine.version,
            state: mine.encode_to_vec(),
        };
        postcard::to_allocvec(&item).ok()
    }

    /// Keeps `s` if it is newer than what we hold; returns whether it was.
    fn offer(&self, s: MemberState) -> bool {
        let mut states = self.lock_states();
        if s.member == self.me {
            // Someone holds a newer version of our own state (we restarted): make ours newer.
            if let Some(mine) = states.get_mut(&self.me)
                && s.version >= mine.version
            {
                mine.version = s.version.saturating_add(1);
            }
            return false;
        }
        if self.is_removed(&s.member) {
            return false;
        }
        if !replaces(states.get(&s.member), &s) {
            return false;
        }
        states.insert(s.member.clone(), s);
        self.dirty.store(true, Ordering::Relaxed);
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StateKey {
    member: String,
    version: u64,
}

impl Invalidates for StateKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.member == other.member && self.version >= other.version
    }
}

#[derive(Serialize, Deserialize)]
struct StateItem {
    member: String,
    version: u64,
    state: Vec<u8>,
}

struct Handler {
    shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed member state: {0}")]
struct BadItem(String);

impl foca::BroadcastHandler<Id> for Handler {
    type Key = StateKey;
    type Error = BadItem;

    fn receive_item(&mut self, data: &[u8], sender: Option<&Id>) -> Result<Option<StateKey>, BadItem> {
        let item: StateItem = postcard::from_bytes(data).map_err(|e| BadItem(e.to_string()))?;
        let state = MemberState::decode(item.state.as_slice()).map_err(|e| BadItem(e.to_string()))?;
        if state.member != item.member || state.version != item.version {
            return Err(BadItem("header does not match the state".into()));
        }
        let key = StateKey {
            member: item.member,
            version: item.version,
        };
        // Our own state, added locally (sender None), is always worth sending.
        if sender.is_none() {
            return Ok(Some(key));
        }
        Ok(self.shared.offer(state).then_some(key))
    }
}

enum Cmd {
    Publish(Vec<u8>),
}

/// A running gossip agent; cheap to clone.
#[derive(Clone)]
pub struct Gossip {
    shared: Arc<Shared>,
    cmd: mpsc::Sender<Cmd>,
}

/// A verified sender, cached by certificate fingerprint.
struct Sender {
    principal: Principal,
    verifier: TokenVerifier,
    not_after_ms: u64,
}

impl Gossip {
    /// Binds the gossip socket and starts the agent; it stops when `shutdown` resolves
    /// (after telling the others it is leaving).
    pub async fn start(
        settings: GossipSettings,
        identity: TlsIdentity,
        signer: Arc<TokenSigner>,
        local: MemberState,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(Gossip, SocketAddr), GossipError> {
        if settings.probe_rtt >= settings.probe_period || settings.probe_rtt.is_zero() {
            return Err(GossipError::Config("probe_rtt must be above zero and below probe_period".into()));
        }
        let socket = UdpSocket::bind(settings.listen)
            .await
            .map_err(|e| GossipError::Bind(settings.listen, e))?;
        let bound = socket.local_addr().map_err(|e| GossipError::Bind(settings.listen, e))?;
        // Port 0: the one the socket was given (on the advertised host, if one is set).
        let advertise = if settings.advertise.ip().is_unspecified() {
            bound
        } else if settings.advertise.port() == 0 {
            SocketAddr::new(settings.advertise.ip(), bound.port())
        } else {
            settings.advertise
        };
        let me = identity.principal.domain.clone();
        let shared = Arc::new(Shared::new(&me, settings.clock.clone()));
        // What we knew of the others before a restart, until gossip brings newer versions.
        let states_file = settings.peers_file.as_ref().map(|f| f.with_extension("states"));
        if let Some(f) = &states_file {
            for s in load_states(f) {
                if s.member != me {
                    shared.offer(s);
                }
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let gossip = Gossip {
            shared: shared.clone(),
            cmd: cmd_tx,
        };
        gossip.publish(local);

        // Sized for the largest federation we support (50+ coordinators): how often an
        // update is retransmitted grows with the log of this, so "down" reaches everyone
        // quickly in a large federation at a small cost in a small one.
        let mut config = foca::Config::new_lan(NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN));
        config.probe_period = settings.probe_period;
        config.probe_rtt = settings.probe_rtt;
        config.suspect_to_down_after = settings.suspect_timeout;
        config.max_packet_size = NonZeroUsize::new(FOCA_PACKET).unwrap_or(NonZeroUsize::MIN);
        config.remove_down_after = Some(Duration::from_secs(7 * 86400));
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        let id = Id {
            member: me,
            addr: advertise,
            bump: shared.clock.now_ms(),
        };
        let foca = Foca::with_custom_broadcast(id, config, rand::make_rng(), PostcardCodec, Handler { shared: shared.clone() });
        let mut bootstrap = settings.bootstrap.clone();
        if let Some(f) = &settings.peers_file
            && let Ok(text) = std::fs::read_to_string(f)
        {
            bootstrap.extend(text.lines().filter_map(|l| l.trim().parse::<SocketAddr>().ok()));
        }
        bootstrap.retain(|a| *a != advertise && *a != bound);
        bootstrap.sort();
        bootstrap.dedup();
        let agent = Agent {
            foca,
            socket: Arc::new(socket),
            identity,
            signer,
            shared,
            senders: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            runtime: foca::AccumulatingRuntime::new(),
            bootstrap,
            peers_file: settings.peers_file,
            states_file,
            leaving: false,
        };
        tokio::spawn(agent.run(cmd_rx, shutdown));
        Ok((gossip, advertise))
    }

    /// Publishes a new version of our own state (version: max(now, previous + 1)).
    pub fn publish(&self, mut state: MemberState) {
        {
            let mut states = self.shared.lock_states();
            let prev = states.get(&self.shared.me).map(|s| s.version).unwrap_or(0);
            state.member = self.shared.me.clone();
            state.version = next_version(prev, self.shared.clock.now_ms());
            // Once we said we are stopping, every later state says so too.
            state.stopped_ms = self.shared.stopped_ms.load(Ordering::Relaxed);
            states.insert(self.shared.me.clone(), state.clone());
        }
        let item = StateItem {
            member: state.member.clone(),
            version: state.version,
            state: state.encode_to_vec(),
        };
        if let Ok(bytes) = postcard::to_allocvec(&item) {
            let _ = self.cmd.try_send(Cmd::Publish(bytes));
        }
    }

    /// Adds states learned by anti-entropy; returns how many were news.
    pub fn merge(&self, states: Vec<MemberState>) -> usize {
        states.into_iter().filter(|s| self.shared.offer(s.clone())).count()
    }

    /// Every member state we know, ours included.
    pub fn states(&self) -> Vec<MemberState> {
        let mut v: Vec<MemberState> = self.shared.lock_states().values().cloned().collect();
        v.sort_by(|a, b| a.member.cmp(&b.member));
        v
    }

    pub fn state_of(&self, member: &str) -> Option<MemberState> {
        self.shared.lock_states().get(member).cloned()
    }

    /// Every other member gossip has heard of.
    pub fn peers(&self) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self.shared.lock_peers().values().cloned().collect();
        v.sort_by(|a, b| a.member.cmp(&b.member));
        v
    }

    pub fn peer_state(&self, member: &str) -> Option<PeerState> {
        self.shared.lock_peers().get(member).map(|p| p.state)
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Stops hearing from members removed from the federation: their datagrams are dropped
    /// (and counted), their states forgotten and refused, and they leave the peer list.
    /// Returns whether anything changed.
    pub fn remove_members<S: AsRef<str>>(&self, members: &[S]) -> bool {
        let mut changed = false;
        {
            let mut removed = self.shared.removed.lock().unwrap_or_else(|p| p.into_inner());
            for m in members {
                changed |= removed.insert(m.as_ref().to_string());
            }
        }
        if changed {
            let removed = self.shared.removed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            self.shared.lock_states().retain(|m, _| !removed.contains(m));
            self.shared.lock_peers().retain(|m, _| !removed.contains(m));
            self.shared.dirty.store(true, Ordering::Relaxed);
        }
        changed
    }

    pub fn member(&self) -> &str {
        &self.shared.me
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    seq: u64,
}

struct Agent {
    foca: Foca<Id, PostcardCodec, rand::rngs::StdRng, Handler>,
    socket: Arc<UdpSocket>,
    identity: TlsIdentity,
    signer: Arc<TokenSigner>,
    shared: Arc<Shared>,
    senders: HashMap<String, Sender>,
    timers: BinaryHeap<Reverse<(Due, TimerBox)>>,
    timer_seq: u64,
    runtime: foca::AccumulatingRuntime<Id>,
    bootstrap: Vec<SocketAddr>,
    peers_file: Option<PathBuf>,
    states_file: Option<PathBuf>,
    /// We are leaving the federation (clean shutdown).
    leaving: bool,
}

/// Other members' states saved by an earlier run (empty when missing or unreadable).
fn load_states(path: &std::path::Path) -> Vec<MemberState> {
    let Ok(bytes) = std::fs::read(path) else { return vec![] };
    let Ok(items) = postcard::from_bytes::<Vec<Vec<u8>>>(&bytes) else {
        tracing::warn!(file = %path.display(), "ignoring an unreadable saved gossip state file");
        return vec![];
    };
    items.iter().filter_map(|b| MemberState::decode(b.as_slice()).ok()).collect()
}

/// Foca timers, ordered only by their due time and sequence.
struct TimerBox(Timer<Id>);
impl PartialEq for TimerBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TimerBox {}
impl PartialOrd for TimerBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Agent {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut announce = tokio::time::interval(ANNOUNCE_RETRY);
        let mut last_peers_file = String::new();
        loop {
            let next_timer = self.timers.peek().map(|Reverse((d, _))| d.at);
            let sleep = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => {
                    // Say we are stopping on purpose (riding on the leave messages), so the
                    // others log a planned absence, not a failure.
                    let now = self.shared.clock.now_ms();
                    self.shared.stopped_ms.store(now, Ordering::Relaxed);
                    if let Some(bytes) = self.shared.bump_own_with(|s| s.stopped_ms = now) {
                        let _ = self.foca.add_broadcast(&bytes);
                    }
                    self.leaving = true;
                    let _ = self.foca.leave_cluster(&mut self.runtime);
                    self.flush().await;
                    tracing::info!("left the federation's gossip (clean shutdown)");
                    return;
                }
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    if let Some(payload) = self.open(&buf[..n], from) {
                        self.shared.counters.received.fetch_add(1, Ordering::Relaxed);
                        self.shared.counters.received_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        if let Err(e) = self.foca.handle_data(&payload, &mut self.runtime) {
                            tracing::debug!(%from, "gossip datagram ignored: {e}");
                        }
                    }
                }
                _ = sleep => {
                    if let Some(Reverse((_, TimerBox(t)))) = self.timers.pop()
                        && let Err(e) = self.foca.handle_timer(t, &mut self.runtime) {
                            tracing::debug!("gossip timer: {e}");
                    }
                }
                Some(cmd) = cmds.recv() => match cmd {
                    Cmd::Publish(bytes) => {
                        if let Err(e) = self.foca.add_broadcast(&bytes) {
                            tracing::debug!("state too large to piggy-back ({e}); anti-entropy will carry it");
                        }
                    }
                },
                _ = announce.tick() => {
                    if self.foca.num_members() == 0 {
                        for addr in self.bootstrap.clone() {
                            let dst = Id { member: String::new(), addr, bump: 0 };
                            let _ = self.foca.announce(dst, &mut self.runtime);
                        }
                    }
                }
            }
            self.flush().await;
            self.refresh_peers(&mut last_peers_file);
        }
    }

    /// Sends what foca queued, schedules its timers, handles its notifications.
    async fn flush(&mut self) {
        while let Some((dst, data)) = self.runtime.to_send() {
            let sent_ms = self.shared.clock.now_ms();
            let env = Envelope {
                version: ENVELOPE_VERSION,
                chain: self.identity.chain_der(),
                sent_ms,
                sig: self.signer.sign_raw(&signed_bytes(sent_ms, &data)).to_vec(),
                payload: data.to_vec(),
            };
            if let Ok(bytes) = postcard::to_allocvec(&env)
                && self.socket.send_to(&bytes, dst.addr).await.is_ok()
            {
                self.shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                self.shared.counters.sent_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse((
                Due {
                    at: now + after,
                    seq: self.timer_seq,
                },
                TimerBox(timer),
            )));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(member = %id.member, addr = %id.addr, "federation member up");
                    // A newcomer missed our earlier broadcasts: send our state again.
                    if let Some(bytes) = self.shared.bump_own() {
                        let _ = self.foca.add_broadcast(&bytes);
                    }
                }
                OwnedNotification::MemberDown(id) if !self.shared.is_removed(&id.member) => {
                    if self.shared.stopped_ms(&id.member) > 0 {
                        tracing::info!(member = %id.member, "federation member stopped (it shut down cleanly)");
                    } else {
                        self.shared.counters.members_down.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(member = %id.member, "federation member down");
                    }
                }
                // Leaving makes us defunct on purpose.
                OwnedNotification::Defunct if self.leaving => {}
                OwnedNotification::Defunct => {
                    // We were declared down (e.g. after a partition): come back as a new incarnation.
                    tracing::warn!("declared down by the federation; rejoining");
                    let _ = self.foca.reuse_down_identity();
                }
                _ => {}
            }
        }
    }

    /// Mirrors foca's view of every member into the shared table.
    fn refresh_peers(&mut self, last_file: &mut String) {
        let mut peers = self.shared.lock_peers();
        let mut addrs = Vec::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.member == self.shared.me || id.member.is_empty() || self.shared.is_removed(&id.member) {
                continue;
            }
            let state = match m.state() {
                foca::State::Alive => PeerState::Alive,
                foca::State::Suspect => PeerState::Suspect,
                foca::State::Down => PeerState::Down,
            };
            // Foca keeps one identity per member (a restart's newer incarnation wins).
            let e = peers.entry(id.member.clone()).or_insert_with(|| PeerView {
                member: id.member.clone(),
                state,
                last_seen_ms: 0,
                gossip_addr: None,
                stopped_ms: 0,
            });
            e.state = state;
            e.gossip_addr = Some(id.addr);
            e.stopped_ms = if state == PeerState::Down {
                self.shared.lock_states().get(&id.member).map_or(0, |s| s.stopped_ms)
            } else {
                0
            };
            if state != PeerState::Down {
                addrs.push(id.addr.to_string());
            }
        }
        drop(peers);
        if let Some(f) = &self.states_file
            && self.shared.dirty.swap(false, Ordering::Relaxed)
        {
            let items: Vec<Vec<u8>> = self
                .shared
                .lock_states()
                .values()
                .filter(|s| s.member != self.shared.me)
                .map(|s| s.encode_to_vec())
                .collect();
            let tmp = f.with_extension("states-tmp");
            let saved = postcard::to_allocvec(&items)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|_| std::fs::rename(&tmp, f));
            if let Err(e) = saved {
                tracing::debug!(file = %f.display(), "cannot save gossip states: {e}");
                self.shared.dirty.store(true, Ordering::Relaxed);
            }
        }
        if let Some(f) = &self.peers_file {
            addrs.sort();
            addrs.dedup();
            let text = addrs.join("\n");
            if !addrs.is_empty() && text != *last_file {
                let tmp = f.with_extension("tmp");
                if std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, f)).is_ok() {
                    *last_file = text;
                }
            }
        }
    }

    /// Authenticates one datagram; returns foca's payload, or None (dropped and counted).
    fn open(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        match self.verify(datagram) {
            Ok((principal, payload)) => {
                if principal.domain != self.shared.me {
                    let mut peers = self.shared.lock_peers();
                    let e = peers.entry(principal.domain.clone()).or_insert_with(|| PeerView {
                        member: principal.domain.clone(),
                        state: PeerState::Alive,
                        last_seen_ms: 0,
                        gossip_addr: None,
                        stopped_ms: 0,
                    });
                    e.last_seen_ms = self.shared.clock.now_ms();
                }
                Some(payload)
            }
            Err(why) => {
                let n = self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    tracing::warn!(%from, dropped_total = n + 1, "dropped a gossip datagram: {why}");
                }
                None
            }
        }
    }

    fn verify(&mut self, datagram: &[u8]) -> Result<(Principal, Vec<u8>), String> {
        let env: Envelope = postcard::from_bytes(datagram).map_err(|_| "not a signed envelope".to_string())?;
        if env.version != ENVELOPE_VERSION {
            return Err(format!("unknown envelope version {}", env.version));
        }
        let now = self.shared.clock.now_ms();
        if env.sent_ms.abs_diff(now) > MAX_SKEW_MS {
            return Err("timestamp too far from now (replayed, or clocks differ by more than a minute)".into());
        }
        let leaf = env.chain.first().ok_or("no certificate")?;
        let fp = fingerprint(leaf);
        let cached = self.senders.get(&fp).is_some_and(|s| s.not_after_ms > now);
        if !cached {
            let (principal, role) = self
                .identity
                .verify_chain(&env.chain)
                .map_err(|e| format!("certificate refused: {e}"))?;
            if role != Role::Coordinator {
                return Err(format!("{principal} is a {role}, not a coordinator"));
            }
            let info = CertInfo::from_der(leaf).map_err(|e| e.to_string())?;
            let verifier = TokenVerifier::new(&info.public_key).map_err(|e| e.to_string())?;
            let not_after_ms = (info.not_after.unix_timestamp().max(0) as u64).saturating_mul(1000);
            if self.senders.len() > 256 {
                self.senders.clear();
            }
            self.senders.insert(
                fp.clone(),
                Sender {
                    principal,
                    verifier,
                    not_after_ms,
                },
            );
        }
        let sender = self.senders.get(&fp).ok_or("sender cache")?;
        if self.shared.is_removed(&sender.principal.domain) {
            return Err(format!("{} was removed from the federation", sender.principal.domain));
        }
        if !sender.verifier.verify_raw(&signed_bytes(env.sent_ms, &env.payload), &env.sig) {
            return Err(format!("bad signature (claims to be {})", sender.principal));
        }
        Ok((sender.principal.clone(), env.payload))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use collective_core::ManualClock;

    use super::*;

    fn state(member: &str, version: u64, nodes: u32) -> MemberState {
        MemberState {
            member: member.into(),
            version,
            // Something that tells versions apart besides the number.
            coordinator: format!("coordinator@{member} with {nodes} nodes"),
            ..Default::default()
        }
    }

    fn held(s: &Shared, member: &str) -> Option<(u64, String)> {
        s.lock_states().get(member).map(|m| (m.version, m.coordinator.clone()))
    }

    #[test]
    fn a_higher_version_wins_an_equal_one_is_stable_and_a_stale_one_never_replaces_a_newer() {
        let s = Shared::new("alice.x", ManualClock::at(1_000));
        assert!(s.offer(state("bob.x", 5, 1)));
        assert!(s.offer(state("bob.x", 9, 2)), "a higher version wins");
        assert!(!s.offer(state("bob.x", 9, 3)), "an equal version is not news");
        assert_eq!(
            held(&s, "bob.x").unwrap().1,
            "coordinator@bob.x with 2 nodes",
            "and does not replace the held one"
        );
        assert!(!s.offer(state("bob.x", 4, 4)), "a stale version is not news");
        assert_eq!(held(&s, "bob.x").unwrap().0, 9);
        // The same states in any order end in the same place.
        let orders = [[1u64, 7, 3], [7, 3, 1], [3, 1, 7]];
        let ends: Vec<_> = orders
            .iter()
            .map(|order| {
                let s = Shared::new("alice.x", ManualClock::at(1_000));
                for v in order {
                    s.offer(state("carol.x", *v, *v as u32));
                }
                held(&s, "carol.x")
            })
            .collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{ends:?}");
        // Removed members' states are refused.
        s.removed.lock().unwrap().insert("dave.x".into());
        assert!(!s.offer(state("dave.x", 1, 1)));
    }

    #[test]
    fn our_own_version_rises_with_the_clock_never_falls_when_it_steps_back_and_never_wraps() {
        let clock = ManualClock::at(10_000);
        let s = Shared::new("alice.x", clock.clone());
        s.lock_states().insert("alice.x".into(), state("alice.x", 0, 0));
        let bump = || {
            s.bump_own().unwrap();
            s.lock_states()["alice.x"].version
        };
        let v = bump();
        assert_eq!(v, 10_000, "the time of day");
        clock.advance(Duration::from_secs(5));
        let v = bump();
        assert_eq!(v, 15_000);
        clock.set(1_000);
        let v = bump();
        assert_eq!(v, 15_001, "a clock stepped back still gives a higher version");
        // Someone relays a newer version of our own state (we restarted): ours goes above.
        assert!(!s.offer(state("alice.x", 50_000, 0)), "our own state is never taken from others");
        assert_eq!(s.lock_states()["alice.x"].version, 50_001);
        assert_eq!(next_version(u64::MAX, 0), u64::MAX, "saturates instead of wrapping to 0");
        assert!(!replaces(Some(&state("bob.x", u64::MAX, 0)), &state("bob.x", u64::MAX, 1)));
    }
}
