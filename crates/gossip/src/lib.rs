//! Membership and dissemination between the coordinators of a federation: SWIM (foca) over
//! UDP, where every datagram travels in an envelope signed with the sending coordinator's
//! key and carrying its certificate chain. A datagram that does not verify against the
//! federation root, does not come from a coordinator certificate, or whose SWIM header names
//! another member than the certificate's, is dropped and counted before foca sees it.
//!
//! On top of membership, each coordinator publishes one [`MemberState`] (its addresses,
//! node summaries, datastore catalog, revocations) with a version, signed by its own key
//! ([`SignedState`]). Whoever relays a state, a receiver keeps it only if the signature
//! verifies against a coordinator certificate of that very member chained to the root, and
//! its version is not in the future; newer versions replace older ones as they spread with
//! foca's piggy-backed broadcasts. The coordinator runs periodic anti-entropy over gRPC and
//! feeds what it learns back with [`Gossip::merge`].
//!
//! Datastore names are shared by the federation: [`Gossip::owner_of`] says which member a
//! name belongs to when two claim it (see [`claims`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collective_core::{Principal, Role, SharedClock};
use collective_pki::{TlsIdentity, TokenSigner, fingerprint_bytes};
pub use collective_proto::v1::{MemberState, SignedState};
use foca::{Codec, Foca, Invalidates, OwnedNotification, PostcardCodec, Timer};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub mod claims;
mod signed;

pub use claims::Contest;
pub use signed::{MAX_FUTURE_MS, StateRefused};

use claims::Owners;
use signed::Signers;

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
    /// Member states refused: forged, signed by the wrong member, or versioned in the future.
    pub states_refused: AtomicU64,
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

/// A member state we keep: decoded, and as its member signed it (to pass on).
#[derive(Clone)]
struct Held {
    state: MemberState,
    signed: SignedState,
}

struct Shared {
    me: String,
    clock: SharedClock,
    states: Mutex<HashMap<String, Held>>,
    /// Verified certificate chains, for states and envelopes alike.
    signers: Mutex<Signers>,
    /// Our identity and key, to sign our own state.
    identity: TlsIdentity,
    key: Arc<TokenSigner>,
    /// Who each datastore name belongs to.
    owners: Mutex<Owners>,
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
    fn new(identity: TlsIdentity, key: Arc<TokenSigner>, clock: SharedClock) -> Shared {
        Shared {
            me: identity.principal.domain.clone(),
            clock,
            states: Mutex::new(HashMap::new()),
            signers: Mutex::new(Signers::new(identity.clone())),
            identity,
            key,
            owners: Mutex::new(Owners::default()),
            peers: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            dirty: AtomicBool::new(false),
            removed: Mutex::new(HashSet::new()),
            stopped_ms: AtomicU64::new(0),
        }
    }

    fn lock_states(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_signers(&self) -> std::sync::MutexGuard<'_, Signers> {
        self.signers.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles who owns each datastore name from the catalogs we hold now.
    fn settle_owners(&self) {
        let (claims, present) = {
            let states = self.lock_states();
            let claims: Vec<(String, String, u64)> = states
                .values()
                .flat_map(|h| {
                    h.state
                        .datastores
                        .iter()
                        .map(|d| (h.state.member.clone(), d.name.clone(), d.created_ms))
                })
                .collect();
            let present: std::collections::HashSet<String> = states.keys().cloned().collect();
            (claims, present)
        };
        let now = self.clock.now_ms();
        self.lock_owners().settle(&claims, &present, now);
    }

    /// Signs `state` as ours and keeps it; returns it encoded for broadcast.
    fn keep_own(&self, states: &mut HashMap<String, Held>, state: MemberState) -> Option<Vec<u8>> {
        let signed = signed::sign(&state, &self.identity, &self.key);
        let item = StateItem {
            member: state.member.clone(),
            version: state.version,
            signed: signed::without_chain(&signed).encode_to_vec(),
        };
        states.insert(self.me.clone(), Held { state, signed });
        postcard::to_allocvec(&item).ok()
    }
    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerView>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn is_removed(&self, member: &str) -> bool {
        self.removed.lock().unwrap_or_else(|p| p.into_inner()).contains(member)
    }

    /// When `member` last said it was shutting down cleanly (0: it did not).
    fn stopped_ms(&self, member: &str) -> u64 {
        self.lock_states().get(member).map_or(0, |h| h.state.stopped_ms)
    }

    /// Raises the version of our own state and returns it encoded for broadcast.
    fn bump_own(&self) -> Option<Vec<u8>> {
        self.bump_own_with(|_| {})
    }

    /// Changes our own state, raises its version and returns it encoded for broadcast.
    fn bump_own_with(&self, change: impl FnOnce(&mut MemberState)) -> Option<Vec<u8>> {
        let mut states = self.lock_states();
        let mut mine = states.get(&self.me)?.state.clone();
        change(&mut mine);
        mine.version = next_version(mine.version, self.clock.now_ms());
        self.keep_own(&mut states, mine)
    }

    /// Keeps `s` if it verifies and is newer than what we hold; returns whether it was news.
    fn offer(&self, s: &SignedState) -> Result<bool, StateRefused> {
        let news = self.offer_unsettled(s)?;
        if news {
            self.settle_owners();
        }
        Ok(news)
    }

    /// [`Shared::offer`] without settling datastore names (loading many states at once
    /// settles once, after the last).
    fn offer_unsettled(&self, s: &SignedState) -> Result<bool, StateRefused> {
        let now = self.clock.now_ms();
        let (state, full) = self.lock_signers().open(s, now)?;
        let mut states = self.lock_states();
        if state.member == self.me {
            // A newer version of our own state, signed by us (we restarted): make ours newer.
            if let Some(mine) = states.get(&self.me)
                && state.version >= mine.state.version
            {
                let mut mine = mine.state.clone();
                mine.version = state.version.saturating_add(1);
                self.keep_own(&mut states, mine);
            }
            return Ok(false);
        }
        if self.is_removed(&state.member) {
            return Ok(false);
        }
        if !replaces(states.get(&state.member).map(|h| &h.state), &state) {
            return Ok(false);
        }
        states.insert(state.member.clone(), Held { state, signed: full });
        drop(states);
        self.dirty.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// [`Shared::offer`], counting and logging a refusal.
    fn offer_logged(&self, s: &SignedState) -> bool {
        match self.offer(s) {
            Ok(news) => news,
            // Not an attack: the chain comes with the next anti-entropy.
            Err(StateRefused::UnknownSigner) => false,
            Err(e) => {
                let n = self.counters.states_refused.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    tracing::warn!(refused_total = n + 1, "refused a member state: {e}");
                }
                false
            }
        }
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

/// A state riding on SWIM messages: who and which version (foca's key, checked against the
/// state), and the [`SignedState`] without its chain.
#[derive(Serialize, Deserialize)]
struct StateItem {
    member: String,
    version: u64,
    signed: Vec<u8>,
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
        let signed = SignedState::decode(item.signed.as_slice()).map_err(|e| BadItem(e.to_string()))?;
        let state = MemberState::decode(signed.state.as_ref()).map_err(|e| BadItem(e.to_string()))?;
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
        Ok(self.shared.offer_logged(&signed).then_some(key))
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
        let shared = Arc::new(Shared::new(identity.clone(), signer.clone(), settings.clock.clone()));
        // What we knew of the others before a restart, until gossip brings newer versions,
        // and who held which datastore name.
        let states_file = settings.peers_file.as_ref().map(|f| f.with_extension("states"));
        if let Some(f) = &states_file {
            if let Some(owners) = load_owners(&f.with_extension("owners")) {
                *shared.lock_owners() = owners;
            }
            for s in load_states(f) {
                if let Err(e) = shared.offer_unsettled(&s) {
                    tracing::debug!("a saved member state is refused: {e}");
                }
            }
            shared.settle_owners();
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
        let bytes = {
            let mut states = self.shared.lock_states();
            let prev = states.get(&self.shared.me).map(|h| h.state.version).unwrap_or(0);
            state.member = self.shared.me.clone();
            state.version = next_version(prev, self.shared.clock.now_ms());
            // Once we said we are stopping, every later state says so too.
            state.stopped_ms = self.shared.stopped_ms.load(Ordering::Relaxed);
            self.shared.keep_own(&mut states, state)
        };
        self.shared.settle_owners();
        if let Some(bytes) = bytes {
            let _ = self.cmd.try_send(Cmd::Publish(bytes));
        }
    }

    /// Adds states learned by anti-entropy; returns how many were news. States that do
    /// not verify are refused, counted and logged.
    pub fn merge(&self, states: &[SignedState]) -> usize {
        states.iter().filter(|s| self.shared.offer_logged(s)).count()
    }

    /// Checks one state as [`Gossip::merge`] would, saying why it is refused.
    pub fn offer(&self, state: &SignedState) -> Result<bool, StateRefused> {
        self.shared.offer(state)
    }

    /// Every member state we know as its member signed it, ours included (for anti-entropy).
    pub fn signed_states(&self) -> Vec<SignedState> {
        let states = self.shared.lock_states();
        let mut v: Vec<(&String, &Held)> = states.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter().map(|(_, h)| h.signed.clone()).collect()
    }

    /// Every member state we know, ours included.
    pub fn states(&self) -> Vec<MemberState> {
        let mut v: Vec<MemberState> = self.shared.lock_states().values().map(|h| h.state.clone()).collect();
        v.sort_by(|a, b| a.member.cmp(&b.member));
        v
    }

    pub fn state_of(&self, member: &str) -> Option<MemberState> {
        self.shared.lock_states().get(member).map(|h| h.state.clone())
    }

    /// The member datastore name `name` belongs to (see [`claims`]).
    pub fn owner_of(&self, name: &str) -> Option<String> {
        self.shared.lock_owners().owner_of(name).map(str::to_string)
    }

    /// Datastore names more than one member claims, with the member each is routed to.
    pub fn contests(&self) -> Vec<Contest> {
        self.shared.lock_owners().contests()
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
            {
                let mut owners = self.shared.lock_owners();
                for m in &removed {
                    owners.release_member(m);
                }
            }
            self.shared.settle_owners();
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
    timers: BinaryHeap<Reverse<(Due, TimerBox)>>,
    timer_seq: u64,
    runtime: foca::AccumulatingRuntime<Id>,
    bootstrap: Vec<SocketAddr>,
    peers_file: Option<PathBuf>,
    states_file: Option<PathBuf>,
    /// We are leaving the federation (clean shutdown).
    leaving: bool,
}

/// Other members' states saved by an earlier run (empty when missing or unreadable); they
/// are verified again as they are loaded.
fn load_states(path: &std::path::Path) -> Vec<SignedState> {
    let Ok(bytes) = std::fs::read(path) else { return vec![] };
    let Ok(items) = postcard::from_bytes::<Vec<Vec<u8>>>(&bytes) else {
        tracing::warn!(file = %path.display(), "ignoring an unreadable saved gossip state file");
        return vec![];
    };
    items.iter().filter_map(|b| SignedState::decode(b.as_slice()).ok()).collect()
}

/// Who held which datastore name, as an earlier run saved it.
fn load_owners(path: &std::path::Path) -> Option<Owners> {
    let bytes = std::fs::read(path).ok()?;
    postcard::from_bytes(&bytes).ok()
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("saving");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
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
                OwnedNotification::MemberDown(id)
                    if self
                        .shared
                        .lock_states()
                        .get(&id.member)
                        .is_some_and(|h| h.state.gossip_addr != id.addr.to_string())
                        && self
                            .foca
                            .iter_membership_state()
                            .any(|m| m.id().member == id.member && m.id().addr != id.addr && m.state() != foca::State::Down) =>
                {
                    tracing::debug!(member = %id.member, addr = %id.addr, "an old address of a member that lives at another is down");
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
        // Where each member's own signed state says its gossip is (read before the peer
        // table is locked).
        let official: HashMap<String, SocketAddr> = self
            .shared
            .lock_states()
            .iter()
            .filter_map(|(m, h)| h.state.gossip_addr.parse().ok().map(|a| (m.clone(), a)))
            .collect();
        let mut peers = self.shared.lock_peers();
        let mut addrs = Vec::new();
        // Foca keys identities by address: a member that came back at another address (a
        // coordinator recovered on a new machine) has its old identity too, down. The
        // identity at the address the member's signed state names is the member; without
        // one there, the member is as alive as its liveliest identity (never an identity
        // another member could keep alive for it at an address of its choosing).
        let rank = |s: PeerState| match s {
            PeerState::Alive => 2,
            PeerState::Suspect => 1,
            PeerState::Down => 0,
        };
        let mut best: HashMap<String, (PeerState, SocketAddr)> = HashMap::new();
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
            if state != PeerState::Down {
                addrs.push(id.addr.to_string());
            }
            let at_official = official.get(&id.member) == Some(&id.addr);
            let e = best.entry(id.member.clone()).or_insert((state, id.addr));
            let e_official = official.get(&id.member) == Some(&e.1);
            if at_official || (!e_official && rank(state) > rank(e.0)) {
                *e = (state, id.addr);
            }
        }
        for (member, (state, addr)) in best {
            let e = peers.entry(member.clone()).or_insert_with(|| PeerView {
                member: member.clone(),
                state,
                last_seen_ms: 0,
                gossip_addr: None,
                stopped_ms: 0,
            });
            e.state = state;
            e.gossip_addr = Some(addr);
            e.stopped_ms = if state == PeerState::Down {
                self.shared.stopped_ms(&member)
            } else {
                0
            };
        }
        drop(peers);
        if let Some(f) = &self.states_file
            && self.shared.dirty.swap(false, Ordering::Relaxed)
        {
            let items: Vec<Vec<u8>> = self
                .shared
                .lock_states()
                .values()
                .filter(|h| h.state.member != self.shared.me)
                .map(|h| h.signed.encode_to_vec())
                .collect();
            let owners = postcard::to_allocvec(&*self.shared.lock_owners());
            let saved = postcard::to_allocvec(&items)
                .map_err(std::io::Error::other)
                .and_then(|b| replace_file(f, &b))
                .and(owners.map_err(std::io::Error::other))
                .and_then(|o| replace_file(&f.with_extension("owners"), &o));
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
        let fp = fingerprint_bytes(leaf);
        let principal = {
            let mut signers = self.shared.lock_signers();
            let sender = signers
                .resolve(fp, &env.chain, now)
                .map_err(|e| format!("certificate refused: {e}"))?;
            if sender.role != Role::Coordinator {
                return Err(format!("{} is a {}, not a coordinator", sender.principal, sender.role));
            }
            if !sender.verifier.verify_raw(&signed_bytes(env.sent_ms, &env.payload), &env.sig) {
                return Err(format!("bad signature (claims to be {})", sender.principal));
            }
            sender.principal.clone()
        };
        if self.shared.is_removed(&principal.domain) {
            return Err(format!("{} was removed from the federation", principal.domain));
        }
        check_sender(&env.payload, &principal)?;
        Ok((principal, env.payload))
    }
}

/// The member a SWIM message says it comes from must be the one whose certificate signed
/// the datagram: nobody speaks for another member (or probes, refutes or leaves in its name).
fn check_sender(payload: &[u8], signer: &Principal) -> Result<(), String> {
    let header = PostcardCodec
        .decode_header(payload)
        .map_err(|e| format!("malformed SWIM message from {signer}: {e}"))?;
    let header: foca::Header<Id> = header;
    if header.src.member != signer.domain {
        return Err(format!(
            "a SWIM message signed by {signer} claims to come from member '{}'",
            header.src.member
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use collective_core::ManualClock;
    use collective_pki::{FederationRoot, IssueRequest, MemberCa};

    use super::*;

    const FEDERATION: &str = "x.local";

    /// A federation root with its members' coordinators (and a user of the last one), on
    /// real certificates.
    struct Fed {
        dir: PathBuf,
        ids: HashMap<String, (TlsIdentity, Arc<TokenSigner>)>,
    }

    impl Drop for Fed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn issue(ca: &MemberCa, dir: &Path, role: Role, name: &str) -> (TlsIdentity, Arc<TokenSigner>) {
        let req = IssueRequest {
            role,
            name: name.into(),
            sans: vec!["127.0.0.1".into()],
            not_before: None,
            not_after: None,
        };
        let out = dir.join(name);
        let (cert, key) = ca.issue_to(&req, &out).unwrap();
        let id = TlsIdentity::load(&out.join("ca.crt"), &cert, &key).unwrap();
        let signer = Arc::new(TokenSigner::from_pkcs8(&id.pkcs8_der(), id.principal.to_string()).unwrap());
        (id, signer)
    }

    fn fed(members: &[&str]) -> Fed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "collective-gossip-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let root = FederationRoot::init(FEDERATION, &dir.join("root")).unwrap();
        let mut ids = HashMap::new();
        for m in members {
            let domain = collective_pki::member_domain(m, FEDERATION);
            let ca_dir = dir.join(m);
            let csr = MemberCa::begin_join(m, &domain, &ca_dir).unwrap();
            let pem = root.sign_member(&csr, m).unwrap();
            let ca = MemberCa::finish_join(&ca_dir, &pem, root.cert_pem()).unwrap();
            ids.insert(m.to_string(), issue(&ca, &ca_dir, Role::Coordinator, "coordinator"));
            ids.insert(format!("{m}-user"), issue(&ca, &ca_dir, Role::Client, "user"));
        }
        Fed { dir, ids }
    }

    impl Fed {
        fn shared(&self, member: &str, clock: SharedClock) -> Shared {
            let (id, key) = &self.ids[member];
            Shared::new(id.clone(), key.clone(), clock)
        }
        /// `state` signed by `who`'s key.
        fn sign(&self, who: &str, state: &MemberState) -> SignedState {
            let (id, key) = &self.ids[who];
            signed::sign(state, id, key)
        }
    }

    fn domain(m: &str) -> String {
        collective_pki::member_domain(m, FEDERATION)
    }

    fn state(member: &str, version: u64, nodes: u32) -> MemberState {
        MemberState {
            member: domain(member),
            version,
            // Something that tells versions apart besides the number.
            coordinator: format!("coordinator@{member} with {nodes} nodes"),
            ..Default::default()
        }
    }

    fn held(s: &Shared, member: &str) -> Option<(u64, String)> {
        s.lock_states()
            .get(&domain(member))
            .map(|h| (h.state.version, h.state.coordinator.clone()))
    }

    #[test]
    fn a_higher_version_wins_an_equal_one_is_stable_and_a_stale_one_never_replaces_a_newer() {
        let f = fed(&["alice", "bob", "carol", "dave"]);
        let s = f.shared("alice", ManualClock::at(1_000));
        let offer = |s: &Shared, m: &str, v: u64, n: u32| s.offer(&f.sign(m, &state(m, v, n))).unwrap();
        assert!(offer(&s, "bob", 5, 1));
        assert!(offer(&s, "bob", 9, 2), "a higher version wins");
        assert!(!offer(&s, "bob", 9, 3), "an equal version is not news");
        assert_eq!(
            held(&s, "bob").unwrap().1,
            "coordinator@bob with 2 nodes",
            "and does not replace the held one"
        );
        assert!(!offer(&s, "bob", 4, 4), "a stale version is not news");
        assert_eq!(held(&s, "bob").unwrap().0, 9);
        // The same states in any order end in the same place.
        let orders = [[1u64, 7, 3], [7, 3, 1], [3, 1, 7]];
        let ends: Vec<_> = orders
            .iter()
            .map(|order| {
                let s = f.shared("alice", ManualClock::at(1_000));
                for v in order {
                    offer(&s, "carol", *v, *v as u32);
                }
                held(&s, "carol")
            })
            .collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{ends:?}");
        // Removed members' states are refused.
        s.removed.lock().unwrap().insert(domain("dave"));
        assert!(!offer(&s, "dave", 1, 1));
    }

    #[test]
    fn our_own_version_rises_with_the_clock_never_falls_when_it_steps_back_and_never_wraps() {
        let f = fed(&["alice", "bob"]);
        let clock = ManualClock::at(10_000);
        let s = f.shared("alice", clock.clone());
        {
            let mut states = s.lock_states();
            s.keep_own(&mut states, state("alice", 0, 0));
        }
        let bump = || {
            s.bump_own().unwrap();
            s.lock_states()[&domain("alice")].state.version
        };
        let v = bump();
        assert_eq!(v, 10_000, "the time of day");
        clock.advance(Duration::from_secs(5));
        let v = bump();
        assert_eq!(v, 15_000);
        clock.set(1_000);
        let v = bump();
        assert_eq!(v, 15_001, "a clock stepped back still gives a higher version");
        // A newer version of our own state (from before a restart) comes back: ours goes above.
        clock.set(50_000);
        assert!(
            !s.offer(&f.sign("alice", &state("alice", 50_000, 0))).unwrap(),
            "never taken from others"
        );
        assert_eq!(s.lock_states()[&domain("alice")].state.version, 50_001);
        // ... but a "newer own state" someone else signed changes nothing.
        assert!(s.offer(&f.sign("bob", &state("alice", 90_000, 0))).is_err());
        assert_eq!(s.lock_states()[&domain("alice")].state.version, 50_001);
        assert_eq!(next_version(u64::MAX, 0), u64::MAX, "saturates instead of wrapping to 0");
        assert!(!replaces(Some(&state("bob", u64::MAX, 0)), &state("bob", u64::MAX, 1)));
    }

    #[test]
    fn a_relay_cannot_forge_alter_or_pin_another_members_state() {
        let f = fed(&["alice", "bob", "carol", "dave"]);
        let clock = ManualClock::at(1_000_000);
        let s = f.shared("alice", clock.clone());
        assert!(s.offer(&f.sign("carol", &state("carol", 1_000, 1))).unwrap());

        // bob signs a state that claims to be carol's (pointing her address at his).
        let mut forged = state("carol", 2_000, 9);
        forged.grpc_addr = "bob's machine:443".into();
        let e = s.offer(&f.sign("bob", &forged)).unwrap_err();
        assert!(matches!(e, StateRefused::WrongMember { .. }), "{e}");
        assert!(e.to_string().contains("a member signs only its own state"), "{e}");

        // bob alters carol's genuine state on the way.
        let mut altered = f.sign("carol", &state("carol", 3_000, 3));
        let mut tampered = state("carol", 3_000, 3);
        tampered.grpc_addr = "bob's machine:443".into();
        altered.state = tampered.encode_to_vec().into();
        assert!(matches!(s.offer(&altered), Err(StateRefused::BadSignature(_))));

        // A state signed by a user of carol's, not her coordinator.
        let e = s.offer(&f.sign("carol-user", &state("carol", 4_000, 4))).unwrap_err();
        assert!(matches!(e, StateRefused::NotCoordinator(..)), "{e}");

        // A version pinned far in the future (even signed by carol herself) is refused, so
        // nobody can freeze what others believe of her.
        let e = s.offer(&f.sign("carol", &state("carol", u64::MAX, 5))).unwrap_err();
        assert!(matches!(e, StateRefused::Future { .. }), "{e}");

        // Without its chain, a state is taken only from a signer already verified.
        let dave_state = signed::without_chain(&f.sign("dave", &state("dave", 1_000, 1)));
        assert_eq!(s.offer(&dave_state), Err(StateRefused::UnknownSigner));
        assert!(s.offer(&f.sign("dave", &state("dave", 900, 1))).unwrap());
        assert!(s.offer(&dave_state).unwrap(), "dave's chain is known now");
        assert_eq!(
            s.counters.states_refused.load(Ordering::Relaxed),
            0,
            "offer() itself does not count"
        );

        // What we hold of carol is still her own, and what we pass on carries her chain.
        assert_eq!(held(&s, "carol").unwrap(), (1_000, "coordinator@carol with 1 nodes".into()));
        let passed = s.lock_states()[&domain("carol")].signed.clone();
        let other = f.shared("bob", clock);
        assert!(other.offer(&passed).unwrap(), "a relayed state verifies for a third member");
    }

    #[test]
    fn a_swim_message_must_come_from_the_member_whose_certificate_signed_the_datagram() {
        let f = fed(&["alice", "bob", "carol"]);
        // A real foca message from carol's identity.
        let carol = Id {
            member: domain("carol"),
            addr: "127.0.0.1:1".parse().unwrap(),
            bump: 1,
        };
        let mut foca = Foca::new(carol, foca::Config::simple(), rand::make_rng::<rand::rngs::StdRng>(), PostcardCodec);
        let mut runtime = foca::AccumulatingRuntime::new();
        let dst = Id {
            member: String::new(),
            addr: "127.0.0.1:2".parse().unwrap(),
            bump: 0,
        };
        foca.announce(dst, &mut runtime).unwrap();
        let (_, payload) = runtime.to_send().unwrap();
        let carol_p = f.ids["carol"].0.principal.clone();
        let bob_p = f.ids["bob"].0.principal.clone();
        assert!(check_sender(&payload, &carol_p).is_ok());
        let e = check_sender(&payload, &bob_p).unwrap_err();
        assert!(e.contains("claims to come from member 'carol.x.local'"), "{e}");
        assert!(check_sender(b"\xff\xff garbage", &bob_p).is_err());
    }

    #[test]
    fn datastore_names_are_settled_from_signed_catalogs() {
        let f = fed(&["alice", "bob"]);
        let clock = ManualClock::at(5_000_000);
        let s = f.shared("alice", clock.clone());
        let mut mine = state("alice", 0, 0);
        mine.datastores.push(collective_proto::v1::CatalogEntry {
            name: "photos".into(),
            created_ms: 4_000_000,
            ..Default::default()
        });
        {
            let mut states = s.lock_states();
            s.keep_own(&mut states, mine);
        }
        s.settle_owners();
        clock.advance(Duration::from_millis(claims::RACE_MS + 1));
        let mut theirs = state("bob", 1_000, 0);
        theirs.datastores.push(collective_proto::v1::CatalogEntry {
            name: "photos".into(),
            created_ms: 1,
            ..Default::default()
        });
        assert!(s.offer(&f.sign("bob", &theirs)).unwrap());
        assert_eq!(s.lock_owners().owner_of("photos"), Some(domain("alice").as_str()));
        assert_eq!(s.lock_owners().contests()[0].others, vec![domain("bob")]);
    }
}
