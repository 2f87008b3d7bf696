//! Bootstrap: turning this same binary into a worker, and the handshake.
//!
//! The master spawns `/proc/self/exe` with the same arguments and a few environment
//! variables: the name of an `IpcOneShotServer`, the offset of the worker's entry function
//! from an anchor function (the binary is the same, so the offset is the same: the approach
//! of `procspawn`), the master's pid, and the identity (device, inode) of the executable.
//! [`init`] at the top of the child's `main` finds them, checks them, and runs the entry,
//! which connects, says [`Hello`] and never returns.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, after, bounded, select};
use engine_core::plumbing::lock;
use engine_core::protocol::{Address, Frame, Hello, Kind, ProtocolError};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::de::DeserializeOwned;

use crate::codes::{EXIT_BOOT_FAILED, INIT};
use crate::error::{ExitHow, SpawnError};
use crate::wire::{Packet, recv_frame, send_frame};

const ENV_SERVER: &str = "ENGINE_PROC_SERVER";
const ENV_ENTRY: &str = "ENGINE_PROC_ENTRY";
const ENV_PARENT: &str = "ENGINE_PROC_PARENT";
const ENV_EXE: &str = "ENGINE_PROC_EXE";

/// The test that worker processes are started as, in a libtest binary that invoked
/// `test_support!`.
static TEST_ENTRY: OnceLock<String> = OnceLock::new();

/// Starts worker processes as the test `name` from now on (see `test_support!`).
#[cfg(feature = "testing")]
pub(crate) fn set_test_entry(name: String) {
    let _ = TEST_ENTRY.set(name);
}

/// A worker's main function: given the one-shot server's name, it connects and runs; its
/// return value is the process's exit code.
pub(crate) type Entry = fn(String) -> i32;

/// What every entry offset is measured from.
#[inline(never)]
fn anchor(server: String) -> i32 {
    i32::try_from(server.len()).unwrap_or(i32::MAX)
}

/// The offset of a function of this binary from the anchor, to name it to a worker.
pub(crate) fn offset_of(function: usize) -> isize {
    function.wrapping_sub(anchor as Entry as usize) as isize
}

/// The address of the function at `offset` from the anchor, in this process.
pub(crate) fn address_at(offset: isize) -> usize {
    (anchor as Entry as usize).wrapping_add_signed(offset)
}

/// Turns this process into a worker if it was spawned as one; otherwise returns at once.
///
/// Call it first thing in `main`, before anything else runs: a worker process starts as a
/// copy of the program, with the same arguments, and runs `main` from the top until it
/// reaches this call. **Whatever `main` does before `init` also happens once in every
/// worker** (a log line, reading a config file; opening a listening socket or starting
/// workers of its own would go wrong), which is why it belongs on the first line. In a
/// worker, `init` never returns: the process runs the worker's code and exits.
///
/// A process that was spawned as a worker but starts workers of its own before calling
/// `init` gets [`SpawnError::NotInitialised`] instead of spawning copies of itself without
/// end.
///
/// ```no_run
/// # #[allow(clippy::needless_doctest_main)]
/// fn main() {
///     engine::proc::init();
///     // ... the program: pools, routers, engines with process-backed stages.
/// }
/// ```
pub fn init() {
    let Some(server) = std::env::var_os(ENV_SERVER) else {
        return;
    };
    let entry = std::env::var_os(ENV_ENTRY);
    let parent = std::env::var_os(ENV_PARENT);
    let exe = std::env::var_os(ENV_EXE);
    // SAFETY: `init` runs first in `main`, before the program starts threads of its own
    // (documented above), or, in a test binary's worker, in the one test libtest runs while
    // its main thread waits for it (`test_support!`), so nothing reads the environment
    // concurrently.
    unsafe {
        for name in [ENV_SERVER, ENV_ENTRY, ENV_PARENT, ENV_EXE] {
            std::env::remove_var(name);
        }
    }
    // A Ctrl-C in a terminal reaches the whole process group: the master handles it and
    // stops its workers in order, so a worker itself ignores SIGINT.
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let code = match worker_entry(server, entry, parent, exe) {
        Ok((entry, server)) => entry(server),
        Err(reason) => {
            tracing::error!("engine-proc worker cannot start: {reason}");
            EXIT_BOOT_FAILED
        }
    };
    std::process::exit(code);
}

/// Checks what the master handed over and finds the entry function.
fn worker_entry(
    server: OsString,
    entry: Option<OsString>,
    parent: Option<OsString>,
    exe: Option<OsString>,
) -> Result<(Entry, String), String> {
    let server = server
        .into_string()
        .map_err(|_| "a non-UTF-8 server name".to_owned())?;
    let parent: u32 = parse(parent, ENV_PARENT)?;
    die_with_parent(parent)?;
    let exe_id: String = parse(exe, ENV_EXE)?;
    if exe_identity().as_deref() != Some(exe_id.as_str()) {
        return Err(
            "this executable is not the master's: master and worker must be the same binary".into(),
        );
    }
    let offset: isize = parse(entry, ENV_ENTRY)?;
    let address = address_at(offset);
    // SAFETY: the master computed `offset` as `entry - anchor` for an `Entry` function of
    // this very binary (checked just above by device and inode of the executable), and
    // functions keep their relative positions however the binary is loaded.
    let entry: Entry = unsafe { std::mem::transmute::<usize, Entry>(address) };
    Ok((entry, server))
}

fn parse<T: std::str::FromStr>(value: Option<OsString>, name: &str) -> Result<T, String> {
    value
        .and_then(|v| v.into_string().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{name} is missing or malformed"))
}

/// Asks the kernel to kill this process when the master dies, and exits now if it already
/// has.
fn die_with_parent(parent: u32) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(format!(
                "prctl(PR_SET_PDEATHSIG): {}",
                io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: getppid has no preconditions.
    let now = unsafe { libc::getppid() };
    if u32::try_from(now).ok() != Some(parent) {
        return Err(format!("the master (pid {parent}) is gone"));
    }
    Ok(())
}

/// Device and inode of the running executable.
fn exe_identity() -> Option<String> {
    let meta = std::fs::metadata("/proc/self/exe").ok()?;
    Some(format!("{}:{}", meta.dev(), meta.ino()))
}

/// The worker side of a connection, after the handshake.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Frames from the master (and, in a router, from peers).
    pub(crate) inbox: IpcReceiver<Packet>,
    /// To the master.
    pub(crate) to_master: IpcSender<Packet>,
}

/// The worker side of the handshake: connects to the master, says hello as `kind`, waits for
/// the welcome.
pub(crate) fn connect(server: String, kind: &str) -> Result<Connection, String> {
    let to_master = IpcSender::<Packet>::connect(server)
        .map_err(|e| format!("cannot connect to the master: {e}"))?;
    let (inbox_sender, inbox) =
        ipc::channel::<Packet>().map_err(|e| format!("cannot open a channel: {e}"))?;
    let hello = Frame::Hello(Hello::new(
        kind,
        Address::named(std::process::id().to_string()),
    ))
    .encode()
    .map_err(|e| e.to_string())?;
    to_master
        .send(Packet::Connect {
            inbox: inbox_sender,
            hello,
        })
        .map_err(|e| format!("cannot reach the master: {e}"))?;
    match recv_frame(&inbox) {
        Ok(Frame::Welcome) => Ok(Connection { inbox, to_master }),
        Ok(Frame::Reject { reason }) => Err(format!("the master refused this worker: {reason}")),
        Ok(other) => Err(format!("expected a welcome, got {}", other.describe())),
        Err(e) => Err(format!("no welcome from the master: {e}")),
    }
}

/// The worker side of a start: connects as `kind`, then reads the master's first message,
/// which carries the worker's init arguments.
pub(crate) fn connect_with_init<T: DeserializeOwned>(
    server: String,
    kind: &str,
) -> Result<(Connection, T), String> {
    let conn = connect(server, kind)?;
    let init = match recv_frame(&conn.inbox) {
        Ok(Frame::Message(e)) if e.kind == Kind::user(INIT) => e
            .body::<T>()
            .map_err(|e| format!("bad init arguments: {e}"))?,
        Ok(other) => return Err(format!("expected init arguments, got {}", other.describe())),
        Err(e) => return Err(format!("no init arguments: {e}")),
    };
    Ok((conn, init))
}

/// The master side of a running worker process; `R` receives from it.
#[derive(Debug)]
pub(crate) struct Spawned<R = IpcReceiver<Packet>> {
    pub(crate) pid: u32,
    /// To the worker's inbox.
    pub(crate) tx: IpcSender<Packet>,
    /// From the worker; disconnects when the worker dies.
    pub(crate) rx: R,
    pub(crate) process: Process,
}

/// What a pool worker sends, received by its driver or, while the driver lets it, by the
/// thread that sent the worker a trickle (see `shared::handoff`).
pub(crate) type Replies = Arc<Mutex<IpcReceiver<Packet>>>;

/// A worker process: its pid, how to signal it, and its end.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    live: Live,
    /// Delivers how the worker ended, once it has (a thread waits for it, so it never
    /// lingers as a zombie).
    exited: Receiver<ExitHow>,
}

impl Spawned {
    /// The same worker, its replies shared.
    pub(crate) fn share_replies(self) -> Spawned<Replies> {
        Spawned {
            pid: self.pid,
            tx: self.tx,
            rx: Arc::new(Mutex::new(self.rx)),
            process: self.process,
        }
    }
}

impl<R> Spawned<R> {
    pub(crate) fn live(&self) -> Live {
        self.process.live.clone()
    }

    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitHow> {
        self.process.wait_exit(timeout)
    }

    pub(crate) fn kill_and_wait(&self) -> ExitHow {
        self.process.kill_and_wait()
    }
}

impl Process {
    /// Sends SIGKILL, unless the worker has already ended.
    pub(crate) fn kill(&self) {
        self.live.signal(libc::SIGKILL);
    }

    /// Waits up to `timeout` for the worker's end.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitHow> {
        self.exited.recv_timeout(timeout).ok()
    }

    /// Waits for the worker's end.
    pub(crate) fn wait(&self) -> ExitHow {
        self.exited.recv().unwrap_or(ExitHow::Unknown)
    }

    /// Kills the worker and waits for its end.
    pub(crate) fn kill_and_wait(&self) -> ExitHow {
        self.kill();
        self.wait()
    }
}

/// A worker's pid, and whether it has been reaped: a signal is only sent while it has not,
/// so it can never reach another process that got the pid again.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pid: u32,
    ended: Arc<Mutex<bool>>,
}

impl Live {
    pub(crate) fn signal(&self, signal: i32) {
        let ended = lock(&self.ended);
        if let (false, Ok(pid)) = (*ended, libc::pid_t::try_from(self.pid)) {
            // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// Blocks until the child `pid` has ended, without reaping it.
fn wait_without_reaping(pid: u32) {
    loop {
        // SAFETY: an all-zero siginfo_t is valid, and waitid writes into the one we pass.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid siginfo pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &raw mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Spawns this binary as a worker running `entry`, and completes the handshake: the worker
/// must say hello as `kind` within `start_timeout`.
pub(crate) fn spawn(
    entry: Entry,
    kind: &str,
    start_timeout: Duration,
) -> Result<Spawned, SpawnError> {
    if std::env::var_os(ENV_SERVER).is_some() {
        return Err(SpawnError::NotInitialised);
    }
    let (server, name) = IpcOneShotServer::<Packet>::new().map_err(SpawnError::Io)?;
    let offset = offset_of(entry as usize);
    let exe = exe_identity()
        .ok_or_else(|| SpawnError::Io(io::Error::other("cannot read /proc/self/exe")))?;
    let mut command = Command::new("/proc/self/exe");
    command
        .env(ENV_SERVER, &name)
        .env(ENV_ENTRY, offset.to_string())
        .env(ENV_PARENT, std::process::id().to_string())
        .env(ENV_EXE, exe)
        .stdin(Stdio::null());
    match TEST_ENTRY.get() {
        // A libtest binary: the worker runs only the test that calls `init`.
        Some(test) => {
            command.args([
                test.as_str(),
                "--exact",
                "--test-threads=1",
                "--nocapture",
                "-q",
            ]);
            let shown = std::env::args_os().any(|a| a == "--nocapture" || a == "--show-output");
            if !shown {
                command.stdout(Stdio::null());
            }
        }
        None => {
            command.args(std::env::args_os().skip(1));
        }
    }
    if let Some(arg0) = std::env::args_os().next() {
        command.arg0(arg0);
    }
    // One thread starts the worker and waits for its end for the worker's whole life: it
    // reaps the process (no zombie) and says at once how it ended. The worker's
    // parent-death signal is tied to the thread that spawned it, so it is this thread,
    // which outlives the worker, and not the caller's, which may end sooner.
    let (pid_tx, pid_rx) = bounded(1);
    let (exit_tx, exited) = bounded(1);
    let ended = Arc::new(Mutex::new(false));
    let reaped = Arc::clone(&ended);
    thread::Builder::new()
        .name("engine-proc-reap".into())
        .spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                    return;
                }
            };
            let _ = pid_tx.send(Ok(child.id()));
            wait_without_reaping(child.id());
            // Reaped under the lock, so that `signal` never hits a reused pid.
            let how = {
                let mut ended = lock(&reaped);
                *ended = true;
                child.wait().map_or(ExitHow::Unknown, ExitHow::from_status)
            };
            let _ = exit_tx.send(how);
        })
        .map_err(SpawnError::Io)?;
    let pid = pid_rx
        .recv()
        .map_err(|_| SpawnError::Io(io::Error::other("the spawning thread vanished")))?
        .map_err(SpawnError::Io)?;

    // `accept` blocks until someone connects, even if the worker died first (ipc-channel
    // #201, #261), so it runs on its own thread; we connect to it ourselves to release it if
    // the worker never does.
    let (accepted_tx, accepted) = bounded(1);
    let accept = thread::Builder::new()
        .name(format!("engine-proc-accept-{pid}"))
        .spawn(move || {
            let _ = accepted_tx.send(server.accept());
        })
        .map_err(SpawnError::Io)?;
    let release = |accept: thread::JoinHandle<()>| {
        if let Ok(unblock) = IpcSender::<Packet>::connect(name.clone()) {
            let _ = unblock.send(Packet::Wake);
        }
        let _ = accept.join();
    };

    let live = Live { pid, ended };
    let failed = |error: SpawnError| {
        live.signal(libc::SIGKILL);
        error
    };
    select! {
        recv(accepted) -> got => {
            let _ = accept.join();
            match got {
                Ok(Ok((rx, Packet::Connect { inbox, hello }))) => {
                    let process = Process { pid, live: live.clone(), exited };
                    let spawned = Spawned { pid, tx: inbox, rx, process };
                    match handshake(&spawned, &hello, kind) {
                        Ok(()) => Ok(spawned),
                        Err(error) => {
                            spawned.kill_and_wait();
                            Err(error)
                        }
                    }
                }
                Ok(Ok(_)) => Err(failed(SpawnError::Handshake(ProtocolError::UnexpectedFrame {
                    expected: "a connection request",
                    found: "another packet".into(),
                }))),
                Ok(Err(e)) => Err(failed(SpawnError::Io(io::Error::other(e.to_string())))),
                Err(_) => Err(failed(SpawnError::Io(io::Error::other("the accepting thread vanished")))),
            }
        }
        recv(exited) -> how => {
            release(accept);
            Err(SpawnError::ExitedEarly { how: how.unwrap_or(ExitHow::Unknown) })
        }
        recv(after(start_timeout)) -> _ => {
            live.signal(libc::SIGKILL);
            release(accept);
            let _ = exited.recv();
            Err(SpawnError::Timeout { after: start_timeout })
        }
    }
}

fn handshake(spawned: &Spawned, hello: &[u8], kind: &str) -> Result<(), SpawnError> {
    let checked = match Frame::decode(hello) {
        Ok(Frame::Hello(hello)) => hello.check(kind),
        Ok(other) => Err(ProtocolError::UnexpectedFrame {
            expected: "hello",
            found: other.describe(),
        }),
        Err(e) => Err(e),
    };
    match checked {
        Ok(()) => send_frame(&spawned.tx, &Frame::Welcome).map_err(SpawnError::Protocol),
        Err(error) => {
            let _ = send_frame(
                &spawned.tx,
                &Frame::Reject {
                    reason: error.to_string(),
                },
            );
            Err(SpawnError::Handshake(error))
        }
    }
}

impl ExitHow {
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            _ => Self::Unknown,
        }
    }
}
