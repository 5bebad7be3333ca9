//! Shared vocabulary of Collective: chunk identifiers, principals and roles, remote paths,
//! the human-friendly size/duration/time formats used in configs and on the command line, and
//! the pool of chunk buffers every process reuses.
//!
//! This crate does no I/O and knows nothing about networking, storage engines or
//! certificates; every other crate builds on it.

mod access;
mod breaker;
pub mod buffers;
mod chunk;
mod crash;
mod path;
mod principal;
mod strategy;
mod units;

pub use access::{AccessError, Grant, Rights, Subject, effective_rights, parse_grant_spec};
pub use breaker::{BREAKER_MAX, BREAKER_MIN, BreakerState, Breakers, backoff, jittered};
pub use chunk::{CHUNK_ID_LEN, ChunkId, MAX_CHUNK_BYTES};
pub use crash::{CRASH_ENV, CRASH_POINTS, crash_point};
pub use path::{MAX_NAME_LEN, MAX_PATH_LEN, PathError, RemotePath, validate_path};
pub use principal::{Principal, PrincipalError, Role, validate_name};
pub use strategy::{Strategy, StrategyError};
pub use units::{UnitError, format_bytes, format_time_ms, parse_duration, parse_size, unix_ms_now};
