//! Writing a member's coordinator and client configurations: the addresses it listens on,
//! the addresses it tells others (checked: never `0.0.0.0` or empty), its certificates.
//! `member join`, `federation init --member` and `ca init --advertise` share it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use collective_client::ClientConfig;
use collective_coordinator::{CoordinatorConfig, FederationConfig};
use collective_core::Role;
use collective_pki::{IssueRequest, MemberCa};

/// Where a new coordinator listens and how other machines reach it.
#[derive(Args, Clone, Debug)]
pub struct ServerAddrs {
    /// gRPC address the coordinator listens on, 0.0.0.0:7000 for every interface
    /// [default: 127.0.0.1:7000]
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// HTTP (metrics, health) address of the coordinator [default: 127.0.0.1:9100]
    #[arg(long)]
    pub http_listen: Option<String>,
    /// UDP gossip address the coordinator listens on, federations only [default:
    /// 127.0.0.1:7946]
    #[arg(long)]
    pub gossip_listen: Option<String>,
    /// Address other machines reach the coordinator at, HOST or HOST:PORT (a bare host
    /// takes the listen ports); needed when listening on 0.0.0.0 or ::
    #[arg(long)]
    pub advertise: Option<String>,
    /// UDP gossip address other members send to [default: the --advertise host with the
    /// --gossip-listen port]
    #[arg(long)]
    pub gossip_advertise: Option<String>,
    /// Extra host name or IP address for the coordinator certificate (repeatable)
    #[arg(long)]
    pub san: Vec<String>,
}

/// [`ServerAddrs`] checked: what goes into the configurations.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub grpc_listen: String,
    pub http_listen: String,
    pub gossip_listen: String,
    pub advertise_grpc: String,
    pub gossip_advertise: String,
    pub sans: Vec<String>,
}

const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7000";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9100";
const DEFAULT_GOSSIP_LISTEN: &str = "127.0.0.1:7946";

impl ServerAddrs {
    /// The first of these flags given on the command line, if any (for commands where
    /// they only mean something together with another flag).
    pub fn given(&self) -> Option<&'static str> {
        [
            ("--grpc-listen", self.grpc_listen.is_some()),
            ("--http-listen", self.http_listen.is_some()),
            ("--gossip-listen", self.gossip_listen.is_some()),
            ("--advertise", self.advertise.is_some()),
            ("--gossip-advertise", self.gossip_advertise.is_some()),
            ("--san", !self.san.is_empty()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(flag, _)| flag)
    }

    /// Checks every address others are told before anything is written or redeemed.
    pub fn resolve(&self, federated: bool) -> Result<Resolved> {
        let grpc_listen = self.grpc_listen.as_deref().unwrap_or(DEFAULT_GRPC_LISTEN);
        let http_listen = self.http_listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
        let gossip_listen = self.gossip_listen.as_deref().unwrap_or(DEFAULT_GOSSIP_LISTEN);
        let adv = self.advertise.as_deref().unwrap_or_default();
        let grpc = collective_rpc::advertised("--advertise", adv, "--grpc-listen", grpc_listen, None).map_err(anyhow::Error::msg)?;
        let gossip = if !federated {
            String::new()
        } else if let Some(g) = &self.gossip_advertise {
            collective_rpc::advertised("--gossip-advertise", g, "--gossip-listen", gossip_listen, None)
                .map_err(anyhow::Error::msg)?
                .to_string()
        } else if self.advertise.is_some() {
            // The advertised host, with the gossip port.
            let listen = collective_rpc::advertised("--gossip-advertise", &grpc.host, "--gossip-listen", gossip_listen, None)
                .map_err(anyhow::Error::msg)?;
            listen.to_string()
        } else {
            collective_rpc::advertised("--gossip-advertise", "", "--gossip-listen", gossip_listen, None)
                .map_err(anyhow::Error::msg)?
                .to_string()
        };
        if federated && grpc.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            eprintln!(
                "note: the coordinator advertises {grpc}, which only this machine can reach; other members need \
                 --grpc-listen 0.0.0.0:PORT --advertise HOST ({})",
                collective_rpc::suggest_addresses()
            );
        }
        let mut sans = vec!["127.0.0.1".to_string()];
        // An advertised IP address is a name the certificate may carry in any federation.
        if grpc.host.parse::<std::net::IpAddr>().is_ok() {
            sans.push(grpc.host.clone());
        }
        for s in &self.san {
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        Ok(Resolved {
            grpc_listen: grpc_listen.to_string(),
            http_listen: http_listen.to_string(),
            gossip_listen: if federated { gossip_listen.to_string() } else { String::new() },
            advertise_grpc: grpc.to_string(),
            gossip_advertise: gossip,
            sans,
        })
    }
}

/// The federation part of a new member's coordinator configuration.
pub struct FederationPart {
    pub bootstrap: Vec<String>,
    /// gRPC addresses of other members' coordinators known now (for the recovery kit).
    pub peers: Vec<String>,
    /// Only on the founder's coordinator (relative to `out`).
    pub root_dir: Option<PathBuf>,
    pub contribution: String,
}

/// What [`write_member`] wrote.
pub struct Written {
    pub coordinator_config: PathBuf,
    pub client_config: PathBuf,
    /// `out/recovery-kit.txt`, to print and keep outside the house.
    pub recovery_kit: PathBuf,
}

fn write_toml<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    std::fs::write(path, toml::to_string_pretty(v)?).with_context(|| format!("cannot write {}", path.display()))
}

/// Issues the coordinator's and the member admin `user`'s certificates into `out/certs` and
/// writes `out/coordinator.toml` and `out/client.toml`. Paths in them are relative to `out`,
/// so the directory can be moved.
pub fn write_member(
    out: &Path,
    ca: &MemberCa,
    ca_dir: &Path,
    user: &str,
    addrs: &Resolved,
    federation: Option<FederationPart>,
) -> Result<Written> {
    let certs = out.join("certs");
    let issue = |role: Role, name: &str| -> Result<(PathBuf, PathBuf)> {
        let req = IssueRequest {
            role,
            name: name.to_string(),
            sans: addrs.sans.clone(),
            not_before: None,
            not_after: None,
        };
        Ok(ca.names().claim_with(name, || ca.issue_to(&req, &certs))?)
    };
    let rel = |p: &Path| p.strip_prefix(out).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf());
    let dot = |p: PathBuf| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p };
    let (cert, key) = issue(Role::Coordinator, "coordinator")?;
    let trust = certs.join("ca.crt");
    let kit_peers = federation.as_ref().map(|f| f.peers.clone()).unwrap_or_default();
    let federated = federation.is_some();
    let cfg = CoordinatorConfig {
        data_dir: PathBuf::from("coordinator-data"),
        grpc_listen: addrs.grpc_listen.clone(),
        http_listen: addrs.http_listen.clone(),
        advertise_grpc: addrs.advertise_grpc.clone(),
        ca_dir: dot(rel(ca_dir)),
        tls: collective_coordinator::TlsFiles {
            ca: rel(&trust),
            cert: rel(&cert),
            key: rel(&key),
        },
        federation: match federation {
            Some(f) => FederationConfig {
                gossip_listen: addrs.gossip_listen.clone(),
                gossip_advertise: addrs.gossip_advertise.clone(),
                bootstrap: f.bootstrap,
                root_dir: f.root_dir.map(|d| dot(rel(&d))).unwrap_or_default(),
                contribution: f.contribution,
                ..Default::default()
            },
            None => FederationConfig::default(),
        },
        ..Default::default()
    };
    let coordinator_config = out.join("coordinator.toml");
    write_toml(&coordinator_config, &cfg)?;
    let (cert, key) = issue(Role::Client, user)?;
    let client = ClientConfig {
        coordinator: addrs.advertise_grpc.clone(),
        ca: rel(&trust),
        cert: rel(&cert),
        key: rel(&key),
        ..Default::default()
    };
    let client_config = out.join("client.toml");
    write_toml(&client_config, &client)?;
    let recovery_kit = collective_client::enrol::write_recovery_kit(
        out,
        ca_dir,
        &collective_client::enrol::KitFacts {
            member: ca.member.clone(),
            domain: ca.domain.clone(),
            federation: if federated {
                ca.domain.split_once('.').map(|(_, f)| f.to_string()).unwrap_or_default()
            } else {
                String::new()
            },
            bootstrap: kit_peers,
        },
    )?;
    Ok(Written {
        coordinator_config,
        client_config,
        recovery_kit,
    })
}

/// Tells what [`write_member`] wrote and what to do next.
pub fn print_written(w: &Written, addrs: &Resolved, ca_dir: &Path) {
    println!("  member CA:          {}", ca_dir.display());
    println!("  coordinator config: {}", w.coordinator_config.display());
    println!("  your client config: {}", w.client_config.display());
    println!(
        "  recovery kit:       {}  (print it and keep it outside the house; `collective member recovery-kit` writes it again)",
        w.recovery_kit.display()
    );
    println!(
        "  others reach the coordinator at {}{}",
        addrs.advertise_grpc,
        if addrs.gossip_advertise.is_empty() {
            String::new()
        } else {
            format!(" (gossip {})", addrs.gossip_advertise)
        }
    );
    println!("next:");
    println!("  collective coordinator --config {}", w.coordinator_config.display());
    println!(
        "  collective ca issue --ca {} --role node --name node-01 --san <host> --out <dir>   (then start nodes)",
        ca_dir.display()
    );
    println!(
        "  export COLLECTIVE_CONFIG={}   (or copy it to ~/.config/collective/client.toml)",
        w.client_config.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(grpc: &str, adv: Option<&str>, gossip_adv: Option<&str>) -> ServerAddrs {
        ServerAddrs {
            grpc_listen: Some(grpc.into()),
            http_listen: Some("0.0.0.0:9100".into()),
            gossip_listen: Some("0.0.0.0:7946".into()),
            advertise: adv.map(Into::into),
            gossip_advertise: gossip_adv.map(Into::into),
            san: vec![],
        }
    }

    #[test]
    fn listening_everywhere_without_advertise_is_refused_before_anything_is_written() {
        let e = addrs("0.0.0.0:7000", None, None).resolve(true).unwrap_err().to_string();
        assert!(e.contains("--advertise"), "{e}");
    }

    #[test]
    fn a_bare_advertised_host_gives_both_advertised_addresses_and_a_san() {
        let r = addrs("0.0.0.0:7000", Some("192.168.2.20"), None).resolve(true).unwrap();
        assert_eq!(r.advertise_grpc, "192.168.2.20:7000");
        assert_eq!(r.gossip_advertise, "192.168.2.20:7946");
        assert!(r.sans.contains(&"192.168.2.20".to_string()));
        let r = addrs("0.0.0.0:7000", Some("192.168.2.20"), Some("10.1.1.1:17946"))
            .resolve(true)
            .unwrap();
        assert_eq!(r.gossip_advertise, "10.1.1.1:17946");
        let r = addrs("0.0.0.0:7000", Some("192.168.2.20"), None).resolve(false).unwrap();
        assert_eq!(r.gossip_advertise, "");
        assert_eq!(r.gossip_listen, "");
    }

    #[test]
    fn an_unspecified_gossip_advertise_is_refused() {
        let e = addrs("0.0.0.0:7000", Some("192.168.2.20"), Some("0.0.0.0:7946"))
            .resolve(true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gossip-advertise"), "{e}");
    }
}
