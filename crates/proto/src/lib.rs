//! Wire formats of Collective: the gRPC services (coordinator registry and metadata, node
//! control), the capability token and the QUIC chunk protocol messages, generated from
//! `proto/collective/v1/*.proto`, and the conversions between its enums and the domain
//! types of `collective-core`. No other logic lives here.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("collective.v1");
}

mod convert {
    //! Between the wire's enums and the domain types of `collective-core`.

    use collective_core::Strategy;

    use crate::v1::PlacementStrategy;

    impl From<Strategy> for PlacementStrategy {
        fn from(s: Strategy) -> Self {
            match s {
                Strategy::Media => PlacementStrategy::Media,
                Strategy::Backup => PlacementStrategy::Backup,
                Strategy::Hybrid => PlacementStrategy::Hybrid,
            }
        }
    }

    impl PlacementStrategy {
        /// The strategy, or `None` when the sender left it unspecified.
        pub fn known(self) -> Option<Strategy> {
            match self {
                PlacementStrategy::Unspecified => None,
                PlacementStrategy::Media => Some(Strategy::Media),
                PlacementStrategy::Backup => Some(Strategy::Backup),
                PlacementStrategy::Hybrid => Some(Strategy::Hybrid),
            }
        }

        /// The strategy's word (`media`), or `unspecified`.
        pub fn name(self) -> &'static str {
            self.known().map_or("unspecified", |s| s.as_str())
        }
    }
}
