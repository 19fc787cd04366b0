//! Child processes under a wall clock. Each child leads a process group of its own, so
//! whatever it starts (the parser child's `tesseract` and `pdftoppm`) is in the group too,
//! and at the deadline the whole group is killed: no grandchild outlives its item, and the
//! engine thread waiting on the child returns, releasing its CPU slot. A tool runs once
//! ([`output`]); the parser child serves one document after another
//! ([`Serving`]), with a deadline per document.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A running child and the watchdog that kills its group at the deadline.
struct Watched {
    child: Child,
    done: mpsc::Sender<()>,
    fired: mpsc::Receiver<()>,
}

/// Starts `cmd` as the leader of a new process group, killed with its group after `timeout`.
fn spawn(cmd: &mut Command, timeout: Duration) -> std::io::Result<Watched> {
    let child = cmd.process_group(0).spawn()?;
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let (done, stop) = mpsc::channel::<()>();
    let (fire, fired) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("docfleet-watchdog".into())
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(timeout) {
                // Said before the kill: the waiter wakes when the child dies and must then
                // know why.
                let _ = fire.send(());
                let _ = killpg(group, Signal::SIGKILL);
            }
        })?;
    Ok(Watched { child, done, fired })
}

/// Most of a child's stderr kept: enough for its last words.
const STDERR_KEPT: u64 = 64 << 10;

impl Watched {
    /// Waits for the child's output; `Err(None)` when the deadline killed it.
    fn wait(mut self) -> Result<Output, Option<std::io::Error>> {
        let stderr = self.child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let _ = (&mut e).take(STDERR_KEPT).read_to_end(&mut kept);
                let _ = std::io::copy(&mut e, &mut std::io::sink());
                kept
            })
        });
        let mut stdout = Vec::new();
        let read = match self.child.stdout.take() {
            Some(mut o) => o.read_to_end(&mut stdout).map(|_| ()),
            None => Ok(()),
        };
        let status = self.child.wait();
        let _ = self.done.send(());
        let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if self.fired.try_recv().is_ok() {
            return Err(None);
        }
        read.map_err(Some)?;
        Ok(Output {
            status: status.map_err(Some)?,
            stdout,
            stderr,
        })
    }
}

/// Runs `cmd` to completion within `timeout`, with its whole process group.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output, Option<std::io::Error>> {
    use std::process::Stdio;
    let cmd = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(cmd, timeout).map_err(Some)?.wait()
}

/// A child that answers one request after another, each under a deadline of its own: the
/// long-lived parser child. Its stderr is drained as it comes, and the tail kept for the
/// message of a failure.
pub struct Serving {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// `Some(timeout)` arms the watchdog for one request, `None` disarms it.
    arm: Option<mpsc::Sender<Option<Duration>>>,
    fired: Arc<AtomicBool>,
    reaped: bool,
}

/// How a request to a [`Serving`] child went wrong.
#[derive(Debug)]
pub enum Unanswered {
    /// The deadline killed the child and its group.
    Deadline,
    /// The child said more than the bound allows; it was killed.
    TooLong,
    /// The child closed its answer (it died) or the pipe failed.
    Ended(std::io::Error),
}

impl Serving {
    /// Starts `cmd` as the leader of a new process group with piped stdin, stdout and stderr.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::process::Stdio;
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the child's pipes are missing"));
        };
        let stderr = std::thread::Builder::new()
            .name("docfleet-child-stderr".into())
            .spawn(move || {
                // The last words matter: keep a sliding tail of what the child says.
                let mut tail = Vec::new();
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = std::io::Read::read(&mut err, &mut chunk) {
                    tail.extend_from_slice(&chunk[..n]);
                    if tail.len() as u64 > STDERR_KEPT {
                        let cut = tail.len() - STDERR_KEPT as usize / 2;
                        tail.drain(..cut);
                    }
                }
                tail
            })?;
        let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
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
                            fire.store(true, Ordering::SeqCst);
                            let _ = killpg(group, Signal::SIGKILL);
                            return;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr: Some(stderr),
            arm: Some(arm),
            fired,
            reaped: false,
        })
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
        if let Some(arm) = &self.arm {
            let _ = arm.send(Some(timeout));
        }
        // A child that dies while reading closes the pipe; its answer (none) says why.
        let _ = request(&mut self.stdin).and_then(|()| self.stdin.flush());
        let mut answer = Vec::new();
        let read = (&mut self.stdout)
            .take(max_answer.saturating_add(1))
            .read_until(b'\n', &mut answer);
        if let Some(arm) = &self.arm {
            let _ = arm.send(None);
        }
        if self.fired.load(Ordering::SeqCst) {
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
        let status = self.reap();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&stderr).into_owned())
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        // The watchdog goes first, so it cannot fire at a group reused after the reap.
        self.arm = None;
        let group = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = killpg(group, Signal::SIGKILL);
        self.reaped = true;
        self.child.wait().ok()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.reap();
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
