//! Local clusters for trying Collective out and for tests, reached as `collective dev ...`:
//! `dev up` starts a member (or a federation of up to five) from this same binary on
//! loopback or in network namespaces, `dev down` stops it by the PIDs it recorded, and
//! `dev netem` delays and drops packets between the members.
//!
//! It owns the dev layout (`cluster.json`, per-member directories, logs) and the network
//! namespaces it creates. It sets members up through the same library calls a person's
//! commands use (certificates from `collective-pki`, member invites and joining from
//! `collective-client`), and must not reach into the servers' internals: it only writes
//! their configuration files and starts them as processes.
//!
//! Errors are `anyhow`, with context: this is command-line tooling whose errors are only
//! ever shown to the person who ran it, like the binary's.

mod dev;
mod devfed;
mod netem;
mod netns;

pub use dev::{ClusterFile, DevCommand, MemberInfo, ProcessInfo, UpArgs, run};
