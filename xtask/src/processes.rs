//! The child processes of `cargo xtask stress`: waiting with a deadline, killing a process
//! group, printing the stacks of its processes with `gdb`, CPU hogs, and catching ctrl-c.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::{env, io, thread};

use anyhow::{Context, Result, bail};

/// How long `gdb` may take to print the stacks of one process.
const GDB_TIMEOUT: Duration = Duration::from_secs(60);

/// How many CPU hogs run beside the tests.
pub(crate) const HOGS: usize = 2;

/// Waits for `child` to exit until `deadline`: `None` if it is still running then. Fails if
/// xtask was interrupted meanwhile.
pub(crate) fn wait(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("stress: interrupted");
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        // Polling a child process's exit status: a build tool, not a test.
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGKILL to every process of the group `pgid` (none there is fine).
pub(crate) fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) takes no pointers; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Makes the process `command` starts get SIGKILL when xtask dies, however it dies.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The state letter and the process group of the process `pid`, from `/proc/PID/stat`.
fn state_and_group(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, parent pid, process group.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// The processes of the group `pgid`, its leader first.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut pids = vec![pgid];
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if pid != pgid && state_and_group(pid).is_some_and(|(_, group)| group == pgid) {
            pids.push(pid);
        }
    }
    pids[1..].sort_unstable();
    pids
}

/// Prints the stack of every thread of every process of the group `pgid`, with `gdb`.
pub(crate) fn print_stacks(pgid: u32) {
    let pids = group_members(pgid);
    if Command::new("gdb").arg("--version").output().is_err() {
        eprintln!("stress: gdb is missing, so no stacks (install it: apt-get install gdb)");
        return;
    }
    for pid in pids {
        if state_and_group(pid).is_none_or(|(state, _)| state == 'Z') {
            eprintln!("\n---- process {pid} has ended meanwhile: no stacks");
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        eprintln!("\n---- stacks of process {pid}: {}", cmdline.trim_end());
        match gdb_stacks(pid) {
            Ok(text) => eprintln!("{}", text.trim_end()),
            Err(err) => eprintln!("stress: gdb failed on {pid}: {err:#}"),
        }
    }
    eprintln!("---- end of the stacks");
}

/// What `gdb -p PID -batch -ex "thread apply all bt"` prints, within [`GDB_TIMEOUT`].
fn gdb_stacks(pid: u32) -> Result<String> {
    let path = env::temp_dir().join(format!("xtask-stress-gdb-{}.txt", std::process::id()));
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut child = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-iex", "set debuginfod enabled off"])
        .args(["-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start gdb")?;
    if wait(&mut child, Instant::now() + GDB_TIMEOUT)?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("gdb did not finish within {GDB_TIMEOUT:?}");
    }
    let text = fs::read_to_string(&path).unwrap_or_default();
    let _ = fs::remove_file(&path);
    Ok(text)
}

/// Two busy-looping child processes, killed and reaped when dropped.
pub(crate) struct Hogs(Vec<Child>);

impl Hogs {
    /// Starts [`HOGS`] busy loops.
    pub(crate) fn start() -> Result<Self> {
        let mut hogs = Self(Vec::new());
        for _ in 0..HOGS {
            let mut command = Command::new("sh");
            command
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null());
            die_with_parent(&mut command);
            hogs.0
                .push(command.spawn().context("cannot start a CPU hog")?);
        }
        Ok(hogs)
    }

    /// Kills and reaps them now.
    pub(crate) fn stop(self) {}
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            // Best effort: a hog may already be dead (killed by a ctrl-c, say).
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// Set by the SIGINT, SIGTERM and SIGHUP handler while stress runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Catches SIGINT, SIGTERM and SIGHUP (so that a test run's process group, which a ctrl-c
/// does not reach, is killed on the way out) and puts the previous handlers back when dropped.
pub(crate) struct SignalGuard(Vec<(libc::c_int, libc::sigaction)>);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

impl SignalGuard {
    pub(crate) fn install() -> Self {
        let mut previous = Vec::new();
        for signal in SIGNALS {
            // SAFETY: both sigaction structs are valid, zeroed and then filled in; the
            // handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&raw mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &raw const action, &raw mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Self(previous)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (signal, old) in &self.0 {
            // SAFETY: `old` is what sigaction(2) returned for this signal.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}
