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

mod workers {
    //! Between `collective_core::WorkerReport` and the wire.

    use collective_core::{WorkerReport, WorkerState};

    use crate::v1::{self, WorkerInfo};

    impl From<WorkerState> for v1::WorkerState {
        fn from(s: WorkerState) -> Self {
            match s {
                WorkerState::Idle => v1::WorkerState::Idle,
                WorkerState::Running => v1::WorkerState::Running,
                WorkerState::Paused => v1::WorkerState::Paused,
                WorkerState::Failed => v1::WorkerState::Failed,
            }
        }
    }

    impl v1::WorkerState {
        /// The state's word (`running`), or `unknown`.
        pub fn name(self) -> &'static str {
            match self {
                v1::WorkerState::Unspecified => "unknown",
                v1::WorkerState::Idle => WorkerState::Idle.as_str(),
                v1::WorkerState::Running => WorkerState::Running.as_str(),
                v1::WorkerState::Paused => WorkerState::Paused.as_str(),
                v1::WorkerState::Failed => WorkerState::Failed.as_str(),
            }
        }
    }

    impl WorkerInfo {
        /// A worker of `node` ("" for the coordinator) on the wire.
        pub fn of(r: WorkerReport, node: &str) -> WorkerInfo {
            WorkerInfo {
                name: r.name,
                node: node.to_string(),
                state: v1::WorkerState::from(r.state) as i32,
                error: r.error.unwrap_or_default(),
                done: r.done,
                total: r.total,
                throttle: r.throttle,
                runs: r.runs,
                last_run_ms: r.last_run_ms as i64,
            }
        }
    }
}

mod health {
    //! The words people read for node and member states (`status`, `federation peers`,
    //! their `--json`).

    use crate::v1::{MemberHealth, NodeHealth};

    impl NodeHealth {
        pub fn name(self) -> &'static str {
            match self {
                NodeHealth::Unspecified => "unknown",
                NodeHealth::Up => "up",
                NodeHealth::Down => "down",
            }
        }
    }

    impl MemberHealth {
        pub fn name(self) -> &'static str {
            match self {
                MemberHealth::Unspecified => "unknown",
                MemberHealth::Alive => "alive",
                MemberHealth::Suspect => "suspect",
                MemberHealth::Down => "down",
                MemberHealth::Stopped => "stopped",
                MemberHealth::Removed => "removed",
            }
        }
    }
}
