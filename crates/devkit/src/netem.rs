//! `collective dev netem`: delay, jitter and loss on the links between the members of a
//! `dev up --netns` federation, like the kernel's netem (which not every kernel has).
//!
//! An iptables rule in the router namespace hands every packet forwarded from one member to
//! another to a netfilter queue; this program, with a netlink socket opened in the router
//! namespace, holds each packet for the delay (± jitter) and then lets it go, or drops it
//! with the loss probability. Traffic between the host and the members is not touched. The
//! rule is removed when the program stops (Ctrl-C or SIGTERM).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct NetemArgs {
    /// Directory of a federation started with `dev up --members N --netns`
    #[arg(long)]
    dir: PathBuf,
    /// Added to every packet between members, each way
    #[arg(long, default_value = "100ms")]
    delay: String,
    /// Each packet's delay varies uniformly by up to this much either way
    #[arg(long, default_value = "0ms")]
    jitter: String,
    /// Share of packets dropped, in percent
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the random delays and drops (the same seed, the same choices)
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// Appends one netlink attribute (4-byte aligned).
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A netfilter-queue message: netlink header, nfgenmsg for `queue`, then `attrs`.
fn message(kind: u16, flags: u16, queue: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

struct Queue {
    fd: OwnedFd,
    queue: u16,
}

impl Queue {
    /// Binds netfilter queue `queue` in the calling thread's network namespace.
    fn bind(queue: u16) -> Result<Queue> {
        // SAFETY: plain socket call; the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot open a netfilter netlink socket");
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; port 0 lets the kernel pick.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let size = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        // SAFETY: addr lives across the call and size matches it.
        if unsafe { libc::bind(raw, &addr as *const _ as *const libc::sockaddr, size) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot bind the netlink socket");
        }
        let rcvbuf: libc::c_int = 16 << 20;
        // SAFETY: a c_int option value, sized accordingly. Best effort: a smaller buffer only
        // means bursts may be dropped (counted as overruns).
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &rcvbuf as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let q = Queue { fd, queue };
        let mut a = Vec::new();
        attr(&mut a, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8]);
        q.request(&a).context("cannot bind the netfilter queue")?;
        let mut a = Vec::new();
        let mut params = 0xffffu32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        attr(&mut a, NFQA_CFG_PARAMS, &params);
        attr(&mut a, NFQA_CFG_QUEUE_MAXLEN, &65_536u32.to_be_bytes());
        // When the queue overflows, let packets through rather than add loss nobody asked for.
        attr(&mut a, NFQA_CFG_MASK, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes());
        attr(&mut a, NFQA_CFG_FLAGS, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes());
        q.request(&a).context("cannot configure the netfilter queue")?;
        Ok(q)
    }

    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        // SAFETY: msg is a valid buffer of its length; the socket is connected to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr() as *const libc::c_void, msg.len(), 0) };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Sends a config message and waits for the kernel's acknowledgement.
    fn request(&self, attrs: &[u8]) -> Result<()> {
        self.send(&message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self.queue, attrs))?;
        let mut buf = vec![0u8; 8192];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 20 {
            bail!("no answer from the kernel: {}", std::io::Error::last_os_error());
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if kind == NLMSG_ERROR && code != 0 {
            bail!(
                "the kernel refused: {} (does it have netfilter queues, CONFIG_NETFILTER_NETLINK_QUEUE?)",
                std::io::Error::from_raw_os_error(-code)
            );
        }
        Ok(())
    }

    fn verdict(&self, id: u32, verdict: u32) -> std::io::Result<()> {
        let mut a = Vec::new();
        let mut v = verdict.to_be_bytes().to_vec();
        v.extend_from_slice(&id.to_be_bytes());
        attr(&mut a, NFQA_VERDICT_HDR, &v);
        self.send(&message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, self.queue, &a))
    }
}

/// Packet ids in one batch of netlink messages.
fn packet_ids(buf: &[u8], out: &mut Vec<u32>) {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut a = off + 20;
            while a + 4 <= off + len {
                let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]) & 0x7fff;
                if alen < 4 || a + alen > off + len {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    out.push(u32::from_be_bytes([buf[a + 4], buf[a + 5], buf[a + 6], buf[a + 7]]));
                }
                a += (alen + 3) & !3;
            }
        }
        off += (len + 3) & !3;
    }
}

#[derive(Default)]
struct Stats {
    delayed: AtomicU64,
    dropped: AtomicU64,
}

struct Impairment {
    delay: Duration,
    jitter: Duration,
    loss: f64,
    seed: u64,
}

/// Holds and releases packets until `stop` is set.
fn run_queue(q: &Queue, imp: &Impairment, stop: &AtomicBool, stats: &Stats) -> Result<()> {
    let mut rng = crate::dev::XorShift::new(imp.seed);
    let mut rand = move || rng.unit();
    let mut held: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut ids = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(Reverse((due, id))) = held.peek().copied() {
            if due > now {
                break;
            }
            held.pop();
            q.verdict(id, NF_ACCEPT)?;
        }
        let wait_ms = held
            .peek()
            .map(|Reverse((due, _))| due.saturating_duration_since(now).as_millis().min(100) as i32)
            .unwrap_or(100);
        let mut pfd = libc::pollfd {
            fd: q.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, wait_ms) } <= 0 {
            continue;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe {
            libc::recv(
                q.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            // ENOBUFS: the kernel could not queue a notification; those packets pass (fail-open).
            continue;
        }
        ids.clear();
        packet_ids(&buf[..n as usize], &mut ids);
        for &id in &ids {
            if rand() * 100.0 < imp.loss {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                q.verdict(id, NF_DROP)?;
                continue;
            }
            let spread = imp.jitter.as_secs_f64() * (2.0 * rand() - 1.0);
            let d = Duration::from_secs_f64((imp.delay.as_secs_f64() + spread).max(0.0));
            stats.delayed.fetch_add(1, Ordering::Relaxed);
            held.push(Reverse((Instant::now() + d, id)));
        }
    }
    // Let everything still held go before the rule disappears.
    while let Some(Reverse((_, id))) = held.pop() {
        q.verdict(id, NF_ACCEPT)?;
    }
    Ok(())
}

fn iptables(router: &str, op: &str, queue: u16) -> Result<()> {
    let q = queue.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", router, "iptables-legacy", op, "FORWARD", "-i", "m+", "-o", "m+"])
        // Bypass: should this program die without removing the rule, packets pass unharmed
        // instead of being dropped for want of a reader.
        .args(["-j", "NFQUEUE", "--queue-num", &q, "--queue-bypass"])
        .output()
        .context("cannot run iptables-legacy (install the Debian package iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables-legacy {op} in {router} failed: {} (install the Debian package iptables)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub async fn run(a: NetemArgs) -> Result<()> {
    let path = a.dir.join("cluster.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("no cluster in {} (cannot read {})", a.dir.display(), path.display()))?;
    let cluster: crate::dev::ClusterFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a cluster file", path.display()))?;
    let Some(net) = cluster.net else {
        bail!("the federation in {} was not started with --netns", a.dir.display());
    };
    let imp = Impairment {
        delay: collective_core::parse_duration(&a.delay).with_context(|| format!("--delay {}", a.delay))?,
        jitter: collective_core::parse_duration(&a.jitter).with_context(|| format!("--jitter {}", a.jitter))?,
        loss: a.loss,
        seed: a.seed,
    };
    if !(0.0..=100.0).contains(&imp.loss) {
        bail!("--loss is a percentage between 0 and 100");
    }
    let queue = u16::from(net.subnet);
    let router = net.router.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let worker = {
        let (stop, stats, router) = (stop.clone(), stats.clone(), router.clone());
        std::thread::spawn(move || -> Result<()> {
            // The queue lives in the router's namespace: enter it with this thread only.
            let ns = std::fs::File::open(format!("/run/netns/{router}")).with_context(|| format!("no namespace {router}"))?;
            // SAFETY: setns on a namespace file we hold open; it moves only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = anyhow::anyhow!("cannot enter {router}: {}", std::io::Error::last_os_error());
                let _ = ready_tx.send(Err(anyhow::anyhow!("{e}")));
                return Err(e);
            }
            let q = match Queue::bind(queue) {
                Ok(q) => q,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Ok(()));
            run_queue(&q, &imp, &stop, &stats)
        })
    };
    ready_rx.recv().context("the queue thread stopped")??;
    iptables(&router, "-I", queue)?;
    println!(
        "between the members in {}: delay {} ± {}, loss {}% (Ctrl-C or SIGTERM to stop)",
        a.dir.display(),
        a.delay,
        a.jitter,
        a.loss
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let removed = iptables(&router, "-D", queue);
    stop.store(true, Ordering::Relaxed);
    let worked = worker.join().map_err(|_| anyhow::anyhow!("the queue thread panicked"))?;
    println!(
        "stopped: {} packets delayed, {} dropped",
        stats.delayed.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed)
    );
    removed?;
    worked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_read_from_every_message_of_a_batch_and_garbage_is_ignored() {
        let mut batch = Vec::new();
        for id in [7u32, 0x0102_0304] {
            let mut a = Vec::new();
            let mut hdr = id.to_be_bytes().to_vec();
            hdr.extend_from_slice(&[0x08, 0x00, 2]);
            attr(&mut a, 9, b"mark");
            attr(&mut a, NFQA_PACKET_HDR, &hdr);
            batch.extend(message(NFQNL_MSG_PACKET, 0, 5, &a));
        }
        let mut ids = Vec::new();
        packet_ids(&batch, &mut ids);
        assert_eq!(ids, vec![7, 0x0102_0304]);
        ids.clear();
        packet_ids(&batch[..batch.len() - 3], &mut ids);
        assert_eq!(ids, vec![7], "a truncated message is skipped");
        ids.clear();
        packet_ids(&[0xff; 40], &mut ids);
        assert!(ids.is_empty());
    }
}
