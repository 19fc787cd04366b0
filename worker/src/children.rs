//! Child processes under a wall clock. Each child leads a process group of its own, so
//! whatever it starts (the parser child's `tesseract` and `pdftoppm`) is in the group too,
//! and at the deadline the whole group is killed: no grandchild outlives its item, and the
//! engine thread waiting on the child returns, releasing its CPU slot. A tool runs once
//! ([`output`]); the parser child serves one document after another ([`Serving`]), with a
//! deadline per document. Both are watched the same way ([`Watchdog`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The process group a child leads.
fn group_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

/// A thread that kills a process group once an armed deadline passes. Armed and disarmed
/// per request; stopped (and never to fire again) before the group's leader is reaped, so it
/// cannot kill a group reused after the reap.
struct Watchdog {
    /// `Some(timeout)` arms it, `None` disarms it.
    arm: Option<mpsc::Sender<Option<Duration>>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(group: Pid) -> std::io::Result<Self> {
        let fired = Arc::new(AtomicBool::new(false));
        let (arm, armed) = mpsc::channel::<Option<Duration>>();
        let fire = fired.clone();
        std::thread::Builder::new()
            .name("docfleet-watchdog".into())
            .spawn(move || {
                let mut until: Option<Instant> = None;
                loop {
                    let next = match until {
                        None => armed
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                        Some(at) => {
                            armed.recv_timeout(at.saturating_duration_since(Instant::now()))
                        }
                    };
                    match next {
                        Ok(timeout) => until = timeout.map(|t| Instant::now() + t),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // Said before the kill: the waiter wakes when the child dies and
                            // must then know why.
                            fire.store(true, Ordering::SeqCst);
                            let _ = killpg(group, Signal::SIGKILL);
                            return;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Self {
            arm: Some(arm),
            fired,
        })
    }

    fn arm(&self, timeout: Option<Duration>) {
        if let Some(arm) = &self.arm {
            let _ = arm.send(timeout);
        }
    }

    fn stop(&mut self) {
        self.arm = None;
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

/// Most of a child's stderr kept: enough for its last words.
const STDERR_KEPT: usize = 64 << 10;

/// Drains a child's stderr as it comes (a full pipe would stall the child), keeping its tail.
fn keep_tail(mut err: impl Read + Send + 'static) -> std::io::Result<JoinHandle<Vec<u8>>> {
    std::thread::Builder::new()
        .name("docfleet-child-stderr".into())
        .spawn(move || {
            let mut tail = Vec::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = err.read(&mut chunk) {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > STDERR_KEPT {
                    tail.drain(..tail.len() - STDERR_KEPT / 2);
                }
            }
            tail
        })
}

/// Runs `cmd` to completion within `timeout`, with its whole process group; `Err(None)`
/// when the deadline killed it.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output, Option<std::io::Error>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(Some)?;
    let mut watchdog = match Watchdog::start(group_of(&child)) {
        Ok(w) => w,
        Err(e) => {
            let _ = killpg(group_of(&child), Signal::SIGKILL);
            let _ = child.wait();
            return Err(Some(e));
        }
    };
    watchdog.arm(Some(timeout));
    let stderr = child
        .stderr
        .take()
        .map(keep_tail)
        .transpose()
        .map_err(Some)?;
    let mut stdout = Vec::new();
    let read = match child.stdout.take() {
        Some(mut o) => o.read_to_end(&mut stdout).map(|_| ()),
        None => Ok(()),
    };
    let status = child.wait();
    watchdog.stop();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if watchdog.fired() {
        return Err(None);
    }
    read.map_err(Some)?;
    Ok(Output {
        status: status.map_err(Some)?,
        stdout,
        stderr,
    })
}

/// A child that answers one request after another, each under a deadline of its own: the
/// long-lived parser child. Its stderr is drained as it comes, and the tail kept for the
/// message of a failure.
pub struct Serving {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    watchdog: Watchdog,
    reaped: bool,
}

/// How a request to a [`Serving`] child went wrong.
#[derive(Debug)]
pub enum Unanswered {
    /// The deadline killed the child and its group.
    Deadline,
    /// The child said more than the bound allows.
    TooLong,
    /// The child closed its answer (it died) or the pipe failed.
    Ended(std::io::Error),
}

impl Serving {
    /// Starts `cmd` as the leader of a new process group with piped stdin, stdout and stderr.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let started = (|| {
            let (Some(stdin), Some(stdout), Some(err)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(std::io::Error::other("the child's pipes are missing"));
            };
            Ok((
                stdin,
                stdout,
                keep_tail(err)?,
                Watchdog::start(group_of(&child))?,
            ))
        })();
        match started {
            Ok((stdin, stdout, stderr, watchdog)) => Ok(Self {
                child,
                stdin,
                stdout: BufReader::new(stdout),
                stderr: Some(stderr),
                watchdog,
                reaped: false,
            }),
            Err(e) => {
                let _ = killpg(group_of(&child), Signal::SIGKILL);
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The child's pid, which is also its process group.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends one request and reads its answer, one line of at most `max_answer` bytes, all
    /// within `timeout`: past it the child is killed with its group.
    pub fn ask(
        &mut self,
        timeout: Duration,
        max_answer: u64,
        request: impl FnOnce(&mut ChildStdin) -> std::io::Result<()>,
    ) -> Result<Vec<u8>, Unanswered> {
        self.watchdog.arm(Some(timeout));
        // A child that dies while reading closes the pipe; its answer (none) says why.
        let _ = request(&mut self.stdin).and_then(|()| self.stdin.flush());
        let mut answer = Vec::new();
        let read = (&mut self.stdout)
            .take(max_answer.saturating_add(1))
            .read_until(b'\n', &mut answer);
        self.watchdog.arm(None);
        if self.watchdog.fired() {
            return Err(Unanswered::Deadline);
        }
        match read {
            _ if answer.len() as u64 > max_answer => Err(Unanswered::TooLong),
            Ok(_) if answer.last() == Some(&b'\n') => {
                answer.pop();
                Ok(answer)
            }
            Ok(_) => Err(Unanswered::Ended(std::io::ErrorKind::UnexpectedEof.into())),
            Err(e) => Err(Unanswered::Ended(e)),
        }
    }

    /// Ends the child with its group and says how it ended and the tail of its stderr.
    pub fn end(&mut self) -> (Option<std::process::ExitStatus>, String) {
        let status = self.kill();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&stderr).into_owned())
    }

    /// Kills the child with its group and reaps it (once).
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        self.watchdog.stop();
        let _ = killpg(group_of(&self.child), Signal::SIGKILL);
        self.reaped = true;
        self.child.wait().ok()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_kills_the_child_and_what_it_started() {
        let marker = std::env::temp_dir().join(format!("docfleet-child-{}", uuid::Uuid::new_v4()));
        let started = std::time::Instant::now();
        let out = output(
            Command::new("sh")
                .arg("-c")
                .arg(format!("sleep 30 & echo $! > {}; wait", marker.display())),
            Duration::from_millis(300),
        );
        assert!(matches!(out, Err(None)), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let grandchild: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_file(&marker);
        // Killed with its group, and reaped by init: gone, or a zombie for a moment.
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "grandchild alive: {state}"
        );
        // Within its bound, a child's output is its own.
        let ok = output(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(ok.stdout, b"hi\n");
    }
}
