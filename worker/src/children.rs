//! Child processes under a wall clock. Each child leads a process group of its own, so
//! whatever it starts (the parser child's `tesseract` and `pdftoppm`) is in the group too,
//! and at the deadline the whole group is killed: no grandchild outlives its item, and the
//! engine thread waiting on the child returns, releasing its CPU slot.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A running child and the watchdog that kills its group at the deadline.
pub struct Watched {
    /// The child.
    pub child: Child,
    done: mpsc::Sender<()>,
    fired: mpsc::Receiver<()>,
}

/// Starts `cmd` as the leader of a new process group, killed with its group after `timeout`.
pub fn spawn(cmd: &mut Command, timeout: Duration) -> std::io::Result<Watched> {
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
    pub fn wait(self) -> Result<Output, Option<std::io::Error>> {
        self.wait_bounded(u64::MAX)
    }

    /// [`Watched::wait`], keeping at most `max_stdout` bytes of its answer: a child that says
    /// more is killed with its group and its answer cut short, so it cannot fill the worker's
    /// memory through the pipe.
    pub fn wait_bounded(mut self, max_stdout: u64) -> Result<Output, Option<std::io::Error>> {
        use std::io::Read;
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
            Some(mut o) => (&mut o)
                .take(max_stdout.saturating_add(1))
                .read_to_end(&mut stdout)
                .map(|_| ()),
            None => Ok(()),
        };
        if stdout.len() as u64 > max_stdout {
            let group = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
            let _ = killpg(group, Signal::SIGKILL);
        }
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
