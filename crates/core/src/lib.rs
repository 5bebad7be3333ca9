//! Shared vocabulary of Collective: chunk identifiers, principals and roles, remote paths,
//! rights and grants, the placement strategy, the human-friendly size/duration/time formats
//! used in configs and on the command line, the pool of chunk buffers every process reuses,
//! the clock tests can drive, and the one shape of background workers.
//!
//! This crate does no I/O and knows nothing about networking, storage engines or
//! certificates; every other crate builds on it.

mod access;
mod breaker;
pub mod buffers;
mod chunk;
mod clock;
mod crash;
mod path;
mod principal;
mod ratelimit;
mod strategy;
mod units;
mod worker;

pub use access::{
    AccessError, Grant, Rights, ShareRefusal, Subject, effective_rights, held_until, may_share, parse_grant_spec, share_limit,
};
pub use breaker::{BREAKER_MAX, BREAKER_MIN, BreakerState, Breakers, backoff, jittered};
pub use chunk::{CHUNK_ID_LEN, ChunkId, MAX_CHUNK_BYTES};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};
pub use crash::{CRASH_ENV, CRASH_POINTS, crash_point};
pub use path::{MAX_NAME_LEN, MAX_PATH_LEN, PathError, RemotePath, validate_path};
pub use principal::{Principal, PrincipalError, Role, validate_name};
pub use ratelimit::RateLimiter;
pub use strategy::{Strategy, StrategyError};
pub use units::{UnitError, format_bytes, format_time_ms, parse_duration, parse_size, unix_ms_now};
pub use worker::{Run, Worker, WorkerReport, WorkerState, Workers};
