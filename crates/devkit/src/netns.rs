//! `collective dev up --members N --netns`: every member of a local federation on its own
//! network, as if each lived in its own home.
//!
//! Each member gets a network namespace with one interface, `eth0` (10.S.I.2/24), joined by
//! a veth pair to a router namespace (`m<I>` there, 10.S.I.1/24) that forwards between the
//! members. The host reaches every member through one more veth pair into the router
//! (10.S.0.1 ↔ 10.S.0.2, with a route to 10.S.0.0/16), so `dev up` and its user can still
//! talk to all of them. Cutting a member off is `ip -n <router> link set m<I> down`; the
//! addresses exist only inside these namespaces. Needs root (CAP_NET_ADMIN) and iproute2.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The namespaces and links of one federation (saved in cluster.json for `dev down`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Net {
    /// Second octet of every address: 10.S.x.y.
    pub subnet: u8,
    /// The router namespace.
    pub router: String,
    /// The host side of the host ↔ router link.
    pub host_link: String,
    pub members: Vec<NetMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetMember {
    pub name: String,
    pub netns: String,
    /// The member's address (its coordinator and nodes listen on it).
    pub addr: String,
    /// The router's interface towards the member: set it down to cut the member off.
    pub router_link: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Why this machine cannot make namespaces, or None when it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root (CAP_NET_ADMIN); run as root or without --netns".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("network namespaces need the `ip` command (Debian package iproute2)".into()),
    }
}

/// A second octet no interface of the host uses yet, and whose router name is free.
fn free_subnet() -> Result<u8> {
    let addrs = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("cannot run `ip`")?;
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    let routes = Command::new("ip")
        .args(["-4", "route", "show"])
        .output()
        .context("cannot run `ip`")?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let mut rng = crate::dev::XorShift::from_clock();
    for _ in 0..200 {
        let s = 16 + (rng.next() % 230) as u8;
        let prefix = format!("10.{s}.");
        if !addrs.contains(&format!(" {prefix}"))
            && !routes.lines().any(|l| l.starts_with(&prefix))
            && !Path::new(&format!("/run/netns/col{s}-router")).exists()
        {
            return Ok(s);
        }
    }
    bail!("no free 10.x.0.0/16 range for the member networks")
}

/// Makes the router and one namespace per member; on failure removes what it made.
pub fn setup(names: &[&str]) -> Result<Net> {
    if let Some(why) = unavailable() {
        bail!(why);
    }
    // Another federation starting at the same moment may pick the same range: whoever
    // makes the router namespace first has it, the other picks again.
    let mut claimed = None;
    for _ in 0..8 {
        let s = free_subnet()?;
        if ip(&["netns", "add", &format!("col{s}-router")]).is_ok() {
            claimed = Some(s);
            break;
        }
    }
    let Some(s) = claimed else {
        bail!("could not claim a free 10.x.0.0/16 range for the member networks");
    };
    let net = Net {
        subnet: s,
        router: format!("col{s}-router"),
        host_link: format!("col{s}-host"),
        members: names
            .iter()
            .enumerate()
            .map(|(i, n)| NetMember {
                name: n.to_string(),
                netns: format!("col{s}-{n}"),
                addr: format!("10.{s}.{}.2", i + 1),
                router_link: format!("m{}", i + 1),
            })
            .collect(),
    };
    if let Err(e) = build(&net) {
        teardown(&net);
        return Err(e);
    }
    Ok(net)
}

fn build(net: &Net) -> Result<()> {
    let s = net.subnet;
    let r = net.router.as_str();
    ip(&["-n", r, "link", "set", "lo", "up"])?;
    let forward = Command::new("ip")
        .args(["netns", "exec", r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        .status()
        .context("cannot run `ip netns exec`")?;
    if !forward.success() {
        bail!("cannot turn on forwarding in {r}");
    }
    // The host's way in.
    ip(&["link", "add", &net.host_link, "type", "veth", "peer", "name", "host", "netns", r])?;
    ip(&["addr", "add", &format!("10.{s}.0.1/24"), "dev", &net.host_link])?;
    ip(&["link", "set", &net.host_link, "up"])?;
    ip(&["-n", r, "addr", "add", &format!("10.{s}.0.2/24"), "dev", "host"])?;
    ip(&["-n", r, "link", "set", "host", "up"])?;
    ip(&["route", "add", &format!("10.{s}.0.0/16"), "via", &format!("10.{s}.0.2")])?;
    for (i, m) in net.members.iter().enumerate() {
        let i = i + 1;
        ip(&["netns", "add", &m.netns])?;
        ip(&["-n", &m.netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            r,
            "link",
            "add",
            &m.router_link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &m.netns,
        ])?;
        ip(&["-n", r, "addr", "add", &format!("10.{s}.{i}.1/24"), "dev", &m.router_link])?;
        ip(&["-n", r, "link", "set", &m.router_link, "up"])?;
        ip(&["-n", &m.netns, "addr", "add", &format!("{}/24", m.addr), "dev", "eth0"])?;
        ip(&["-n", &m.netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &m.netns, "route", "add", "default", "via", &format!("10.{s}.{i}.1")])?;
    }
    Ok(())
}

/// Removes the namespaces (and with them every link) and the host's link and route.
pub fn teardown(net: &Net) {
    let _ = ip(&["link", "del", &net.host_link]);
    for m in &net.members {
        let _ = ip(&["netns", "del", &m.netns]);
    }
    let _ = ip(&["netns", "del", &net.router]);
}

/// Makes `cmd` run inside `netns`: the namespace file is opened now, and the child joins
/// it between fork and exec.
pub fn run_inside(cmd: &mut Command, netns: &str) -> Result<()> {
    use std::os::fd::IntoRawFd;
    use std::os::unix::process::CommandExt;
    let path = format!("/run/netns/{netns}");
    let fd = std::fs::File::open(&path)
        .with_context(|| format!("cannot open {path}: was the federation started with --netns?"))?
        .into_raw_fd();
    // SAFETY: setns and close are async-signal-safe; the fd stays open in the parent (one
    // per started process, which is few) so it is valid in every child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
