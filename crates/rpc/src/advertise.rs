//! Addresses a server tells others to reach it at. A server may listen on every interface
//! (`0.0.0.0`, `::`), but it must never hand that out: other machines would try to reach it
//! at their own address. Each server checks what it will advertise before it starts, and
//! the commands that write configurations check it before they write them.

use std::net::{IpAddr, SocketAddr};

/// A host and port some other machine can connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Advertised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host:port`, `[v6]:port`, or a bare host (then the port is `None`).
/// An address setting that cannot be used, in words naming the setting and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

fn split_host_port(s: &str) -> Result<(String, Option<u16>), AddressError> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| AddressError(format!("'{s}' has a '[' without its ']'")))?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), Some(parse_port(s, p)?))),
            None if tail.is_empty() => Ok((host.to_string(), None)),
            None => Err(AddressError(format!("'{s}' has text after the ']' that is not :PORT"))),
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), None));
    }
    match s.rsplit_once(':') {
        Some((host, p)) => Ok((host.to_string(), Some(parse_port(s, p)?))),
        None => Ok((s.to_string(), None)),
    }
}

fn parse_port(whole: &str, p: &str) -> Result<u16, AddressError> {
    p.parse::<u16>()
        .map_err(|_| AddressError(format!("'{whole}' does not end in a port number (1-65535)")))
}

fn unreachable_host(host: &str) -> bool {
    host.is_empty() || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

/// This machine's own addresses other machines could use (every interface's, loopback and
/// link-local IPv6 left out), for error messages that suggest one. Empty when they cannot
/// be read.
pub fn machine_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we own and free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET: the address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6: the address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        let link_local_v6 = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if ip.is_loopback() || ip.is_unspecified() || link_local_v6 || out.contains(&ip) {
            continue;
        }
        out.push(ip);
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// "this machine's addresses: 192.168.1.10, 10.0.0.2" (or how to find them).
pub fn suggest_addresses() -> String {
    let addrs = machine_addresses();
    if addrs.is_empty() {
        "this machine has no address other machines could use besides loopback; `ip addr` lists its interfaces".into()
    } else {
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        format!("this machine's addresses: {}", list.join(", "))
    }
}

/// What a server advertises: `advertise` when set (a bare host takes the listen port),
/// otherwise the listen address (`bound_port` replaces a listen port of 0). Refuses an
/// empty or unspecified host, naming `advertise_key` (the setting or flag to fix) and
/// suggesting this machine's addresses.
pub fn advertised(
    advertise_key: &str,
    advertise: &str,
    listen_key: &str,
    listen: &str,
    bound_port: Option<u16>,
) -> Result<Advertised, AddressError> {
    let (listen_host, listen_port) = split_host_port(listen).map_err(|e| AddressError(format!("{listen_key}: {e}")))?;
    let port_of_listen = match (bound_port, listen_port) {
        (Some(b), _) => Some(b),
        (None, Some(p)) if p != 0 => Some(p),
        _ => None,
    };
    if !advertise.trim().is_empty() {
        let (host, port) = split_host_port(advertise).map_err(|e| AddressError(format!("{advertise_key}: {e}")))?;
        if unreachable_host(&host) {
            return Err(AddressError(format!(
                "{advertise_key} is '{advertise}', which other machines cannot connect to; set it to an address of this machine they can reach ({})",
                suggest_addresses()
            )));
        }
        // A listen port of 0 stays 0 here: the server puts in the port it was given.
        let port = port
            .filter(|p| *p != 0)
            .or(port_of_listen)
            .or(listen_port)
            .ok_or_else(|| AddressError(format!("{advertise_key} '{advertise}' needs a port (HOST:PORT)")))?;
        return Ok(Advertised { host, port });
    }
    if unreachable_host(&listen_host) {
        let port = port_of_listen.map(|p| p.to_string()).unwrap_or_else(|| "PORT".into());
        let example = machine_addresses()
            .first()
            .map(|ip| {
                Advertised {
                    host: ip.to_string(),
                    port: 0,
                }
                .to_string()
            })
            .map(|s| s.trim_end_matches(":0").to_string())
            .unwrap_or_else(|| "HOST".into());
        return Err(AddressError(format!(
            "{listen_key} is '{listen}' (every interface), which is not an address other machines can reach, and {advertise_key} is not set; set {advertise_key} = \"{example}:{port}\" or another address of this machine ({})",
            suggest_addresses()
        )));
    }
    let port = port_of_listen
        .or(listen_port)
        .ok_or_else(|| AddressError(format!("{listen_key} '{listen}' needs a port (HOST:PORT)")))?;
    Ok(Advertised { host: listen_host, port })
}

/// [`advertised`] for a listen address already bound.
pub fn advertised_bound(advertise_key: &str, advertise: &str, listen_key: &str, bound: SocketAddr) -> Result<Advertised, AddressError> {
    advertised(advertise_key, advertise, listen_key, &bound.to_string(), Some(bound.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_without_advertise_is_refused_naming_the_key() {
        for listen in ["0.0.0.0:7000", "[::]:7000"] {
            let e = advertised("advertise_grpc", "", "grpc_listen", listen, None).unwrap_err().0;
            assert!(e.contains("set advertise_grpc = \""), "{e}");
            assert!(e.contains("grpc_listen"), "{e}");
        }
        let e = advertised("advertise_grpc", "  ", "grpc_listen", "0.0.0.0:7000", None)
            .unwrap_err()
            .0;
        assert!(e.contains("advertise_grpc"), "{e}");
    }

    #[test]
    fn an_unspecified_advertise_address_is_refused() {
        for adv in ["0.0.0.0:7000", "[::]:7000", "::", "0.0.0.0", ":7000"] {
            let e = advertised("--advertise", adv, "--grpc-listen", "0.0.0.0:7000", None).unwrap_err().0;
            assert!(e.contains("--advertise"), "{adv}: {e}");
            assert!(e.contains("cannot connect"), "{adv}: {e}");
        }
    }

    #[test]
    fn a_bare_host_takes_the_listen_port_and_a_bound_port_replaces_zero() {
        let a = advertised("k", "192.168.1.10", "l", "0.0.0.0:7000", None).unwrap();
        assert_eq!(a.to_string(), "192.168.1.10:7000");
        let a = advertised("k", "nas.lan:7010", "l", "0.0.0.0:7000", None).unwrap();
        assert_eq!(a.to_string(), "nas.lan:7010");
        let a = advertised("k", "fd00::5", "l", "[::]:7000", None).unwrap();
        assert_eq!(a.to_string(), "[fd00::5]:7000");
        let a = advertised_bound("k", "10.0.0.9:0", "l", "0.0.0.0:41000".parse().unwrap()).unwrap();
        assert_eq!(a.to_string(), "10.0.0.9:41000", "an advertised port of 0 is the bound one");
        let a = advertised_bound("k", "", "l", "127.0.0.3:41000".parse().unwrap()).unwrap();
        assert_eq!(a.to_string(), "127.0.0.3:41000");
        let a = advertised("k", "", "l", "127.0.0.1:7000", None).unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:7000");
        let a = advertised("k", "10.0.0.1", "l", "0.0.0.0:0", None).unwrap();
        assert_eq!(a.port, 0, "a listen port of 0 is filled in by the server");
        let e = advertised("k", "10.0.0.1", "l", "0.0.0.0", None).unwrap_err().0;
        assert!(e.contains("needs a port"), "{e}");
    }

    #[test]
    fn machine_addresses_leave_out_loopback_and_unspecified() {
        for ip in machine_addresses() {
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        }
    }
}
