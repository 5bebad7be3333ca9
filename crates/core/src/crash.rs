//! Named crash points, for tests of crash consistency.
//!
//! A process started with `COLLECTIVE_CRASH_AT=<name>` sends itself SIGKILL the moment it
//! reaches the point of that name: no destructors run and nothing more is flushed, exactly
//! as if it were killed with `kill -9` at that instant. Without the variable a crash point costs one
//! load of a cached value.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const CRASH_ENV: &str = "COLLECTIVE_CRASH_AT";

/// Every crash point, in the order a change passes them.
pub const CRASH_POINTS: &[&str] = &[
    "commit:before-transaction",
    "commit:inside-transaction",
    "commit:after-transaction",
    "commit:after-flush",
    "remove:after-transaction",
    "rename:after-transaction",
    "metadata-backup:after-chunks",
    "metadata-backup:after-manifest",
    "metadata-backup:after-progress",
    "metadata-backup:after-record",
];

/// Kills the process if `COLLECTIVE_CRASH_AT` names `point`.
pub fn crash_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_ENV).ok().filter(|s| !s.is_empty()));
    if at.as_deref() == Some(point) {
        eprintln!("crash point {point} reached ({CRASH_ENV}): killing this process now");
        // SIGKILL, as `kill -9` would: no handler, no core dump, nothing flushed.
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}
