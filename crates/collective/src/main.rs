//! `collective`: one binary for every role. `coordinator` and `node` run servers; every
//! other subcommand is a client or a tool. This crate only parses arguments, loads
//! configuration and wires the libraries together.

mod ca;
mod config;
mod context;
mod federate;
mod files;
mod mount;
mod observe;
mod servers;
mod setup;
mod table;
mod upkeep;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "collective",
    version,
    about = "Pool your disks with people you trust.",
    propagate_version = true
)]
struct Cli {
    /// Client configuration file [default: ~/.config/collective/client.toml]
    #[arg(long, global = true, env = "COLLECTIVE_CONFIG")]
    config: Option<PathBuf>,
    /// Use this context (see `collective context list`) instead of the current one
    #[arg(long, global = true, env = "COLLECTIVE_CONTEXT")]
    context: Option<String>,
    /// Coordinator gRPC address (overrides the config)
    #[arg(long, global = true)]
    coordinator: Option<String>,
    /// CA certificate to trust (overrides the config)
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (overrides the config)
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Client private key (overrides the config)
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Log format on stderr: text for people, json (one object per line) for log shippers
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "COLLECTIVE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate authority: make a member CA, issue and inspect certificates
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run a coordinator (metadata, placement, tokens), or back up and restore its metadata
    Coordinator(servers::CoordinatorCli),
    /// Run a storage node (`collective node --config node.toml`), or drain or remove one
    Node(servers::NodeCli),
    /// Store local files (streamed; directories with -r)
    Put(files::PutArgs),
    /// Fetch a remote file or, with -r, a tree
    Get(files::GetArgs),
    /// Print a remote file to stdout
    Cat(files::PathArg),
    /// Store stdin as a remote file (streamed)
    Write(files::PathArg),
    /// List a directory
    Ls(files::LsArgs),
    /// Make a directory
    Mkdir(files::MkdirArgs),
    /// Remove a file or directory
    Rm(files::RmArgs),
    /// Move or rename a file or directory
    Mv(files::MvArgs),
    /// Show a file's or directory's attributes
    Stat(files::StatArgs),
    /// Mount the collective (or one datastore) as a local filesystem
    Mount(mount::MountArgs),
    /// Unmount a mount point, after everything written to it is committed
    Umount(mount::UmountArgs),
    /// Is my data safe? Nodes, capacity, data and replication at a glance
    Status(files::StatusArgs),
    /// Cluster events as they happen: nodes and members up/down, repair, corruption, invites, grants
    Events(observe::EventsArgs),
    /// Who changed what: the coordinator's audit log of mutating operations
    Audit(observe::AuditArgs),
    /// Is everything back to its copies? Chunks at risk, repair progress, estimate
    #[command(subcommand)]
    Repair(upkeep::RepairCommand),
    /// Re-hash stored chunks to find bit rot (and repair it)
    #[command(subcommand)]
    Scrub(upkeep::ScrubCommand),
    /// Background work of the coordinator and its nodes (repair, gc, reconcile, heat,
    /// metadata-backup, scrub): state, progress, throttle; pause and resume
    Workers(workers::WorkersCli),
    /// Federation root and members' view of each other
    #[command(subcommand)]
    Federation(federate::FederationCommand),
    /// Invite members and users; redeem user invites
    #[command(subcommand)]
    Invite(federate::InviteCommand),
    /// Join a federation as a new member
    #[command(subcommand)]
    Member(federate::MemberCommand),
    /// Datastores and who may use them
    #[command(subcommand)]
    Datastore(federate::DatastoreCommand),
    /// The collectives you belong to: list, switch, forget
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// A local cluster for trying Collective out and for tests
    #[command(subcommand)]
    Dev(collective_devkit::DevCommand),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        // No module path: `target` is the field naming what an operation was about.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_target(false)
            .try_init(),
    };
}

/// glibc malloc arenas kept per process: each thread arena otherwise holds on to freed
/// chunk buffers, multiplying resident memory on busy servers.
const MALLOC_ARENAS: libc::c_int = 2;
/// Servers use one: a second arena only adds its own resident pages. The coordinator's
/// peak during `put -r` of 1,000 files was 26.9–32.7 MB with two arenas (bimodal, by
/// whether the second one came into use) and 27.2–28.1 MB with one; a node's during a
/// 500 MB get 37–43 MB with two and 33–36 with one (its chunk buffers are mapped on their
/// own either way), at the same speed.
const SERVER_MALLOC_ARENAS: libc::c_int = 1;

/// Allocations from this size on are mapped on their own and unmapped when freed; chunk
/// buffers are reused through `collective_core::buffers` instead. glibc otherwise raises
/// this threshold to the size of the largest block freed, so 4 MiB chunks came from its
/// heaps, whose holes it keeps: a 500 MB put peaked at 68–82 MB in the client and a get at
/// 48 MB per node, against 44–52 and 35–42 MB with this.
const MMAP_THRESHOLD: libc::c_int = 1 << 20;
/// Free memory kept at the top of a heap before it is given back (a fixed threshold stops
/// glibc from raising it along with the one above).
const TRIM_THRESHOLD: libc::c_int = 4 << 20;

/// Threads a node keeps for blocking work (chunk file writes, flushes and reads). Each
/// costs memory (its stack and allocator caches); without a bound, 1,000 small files put
/// at once had a node running 140 threads and its peak RSS rose by 5–10 MB.
const NODE_BLOCKING_THREADS: usize = 32;

/// Environment variable choosing the Linux scheduling policy of every Collective process:
/// `batch` (the default) or `normal`.
const CPU_SCHEDULING_ENV: &str = "COLLECTIVE_CPU_SCHEDULING";

/// Runs this process under `SCHED_BATCH` unless [`CPU_SCHEDULING_ENV`] says `normal`.
///
/// Moving chunks is bulk work passed between a few threads in each of several processes
/// (client, nodes, coordinator) on few cores. Under the default policy every wake-up of
/// one of them preempts whatever runs on that core: a 500 MB put on two cores was
/// preempted some 7,500 times (client and nodes), each costing a switch and a cache
/// refill. A batch thread that wakes waits for an idle core or the end of the running
/// thread's slice instead; it is otherwise scheduled like any other (same nice level, same
/// share), and it leaves the machine's interactive programs alone. Must run before any
/// thread starts: threads inherit the policy.
fn set_cpu_scheduling() -> anyhow::Result<()> {
    let batch = match std::env::var(CPU_SCHEDULING_ENV) {
        Err(_) => true,
        Ok(v) if v.eq_ignore_ascii_case("batch") => true,
        Ok(v) if v.eq_ignore_ascii_case("normal") => false,
        Ok(v) => anyhow::bail!("{CPU_SCHEDULING_ENV} is '{v}'; set it to 'batch' or 'normal', or unset it (batch)"),
    };
    let policy = if batch { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's policy (priority 0, as both policies require); no
    // pointer is kept.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        // Some sandboxes forbid it: the process runs as it is, which is only slower.
        tracing::debug!("cannot set the CPU scheduling policy: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> ExitCode {
    // Parsing starts no thread.
    let cli = Cli::parse();
    let arenas = match cli.command {
        Command::Coordinator(_) | Command::Node(_) => SERVER_MALLOC_ARENAS,
        _ => MALLOC_ARENAS,
    };
    // SAFETY: called once before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
        if !matches!(cli.command, Command::Coordinator(_)) {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
    // ring is the only crypto provider compiled in; installing it can only fail if one is
    // already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = matches!(
        cli.command,
        Command::Coordinator(servers::CoordinatorCli { command: None, .. })
            | Command::Node(servers::NodeCli { command: None, .. })
            | Command::Dev(_)
            | Command::Mount(mount::MountArgs { foreground: true, .. })
    );
    init_logging(if server { "info" } else { "warn" }, cli.log_format);
    if let Err(e) = set_cpu_scheduling() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Node(servers::NodeCli { command: None, .. })) {
        builder.max_blocking_threads(NODE_BLOCKING_THREADS);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Don't wait for lingering blocking reads (e.g. stdin) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = config::ClientOverrides {
        config: cli.config,
        context: cli.context,
        coordinator: cli.coordinator,
        ca: cli.ca,
        cert: cli.cert,
        key: cli.key,
    };
    match cli.command {
        Command::Ca(c) => ca::run(c),
        Command::Coordinator(a) => servers::coordinator_cli(a).await,
        Command::Node(servers::NodeCli { command: None, run }) => servers::node(run).await,
        Command::Node(servers::NodeCli { command: Some(c), .. }) => match c {
            servers::NodeCommand::Drain {
                node,
                no_wait,
                cancel,
                json,
            } => upkeep::drain(&overrides, node, no_wait, cancel, json).await,
            servers::NodeCommand::Rm { node, force } => upkeep::remove(&overrides, node, force).await,
        },
        Command::Repair(c) => upkeep::repair(&overrides, c).await,
        Command::Scrub(c) => upkeep::scrub(&overrides, c).await,
        Command::Workers(c) => workers::workers(&overrides, c).await,
        Command::Dev(c) => collective_devkit::run(c).await,
        Command::Put(a) => files::put(&overrides, a).await,
        Command::Get(a) => files::get(&overrides, a).await,
        Command::Cat(a) => files::cat(&overrides, a).await,
        Command::Write(a) => files::write(&overrides, a).await,
        Command::Ls(a) => files::ls(&overrides, a).await,
        Command::Mkdir(a) => files::mkdir(&overrides, a).await,
        Command::Rm(a) => files::rm(&overrides, a).await,
        Command::Mv(a) => files::mv(&overrides, a).await,
        Command::Stat(a) => files::stat(&overrides, a).await,
        Command::Status(a) => files::status(&overrides, a).await,
        Command::Events(a) => observe::events(&overrides, a).await,
        Command::Audit(a) => observe::audit(&overrides, a).await,
        Command::Mount(a) => mount::mount(&overrides, a).await,
        Command::Umount(a) => mount::umount(a).await,
        Command::Federation(c) => federate::federation(&overrides, c).await,
        Command::Invite(c) => federate::invite(&overrides, c).await,
        Command::Member(c) => federate::member(&overrides, c).await,
        Command::Datastore(c) => federate::datastore(&overrides, c).await,
        Command::Context(c) => context::run(c),
    }
}
