//! Wire formats of Collective: the gRPC services (coordinator registry and metadata, node
//! control), the capability token and the QUIC chunk protocol messages, generated from
//! `proto/collective/v1/*.proto`. No logic lives here.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("collective.v1");
}
