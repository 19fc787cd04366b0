//! The engine threads: a fixed set of `cpu_slots` threads that read, parse and write items'
//! files, fed from one queue.
//!
//! An item's blocking work used to go to Tokio's blocking pool behind a semaphore of
//! `cpu_slots` permits. Each item then woke a sleeping pool thread and, when done, slept it
//! again: on a fleet of small files two thirds of the worker's CPU samples were the kernel
//! switching tasks (perf, `finish_task_switch` and `try_to_wake_up`). A thread of this pool
//! takes the next job as soon as it finishes one, and sleeps only when the queue is empty, so
//! a busy worker switches per idle moment rather than per item. The pool is also the CPU
//! bound: at most `cpu_slots` jobs run at once.
//!
//! A job past its deadline is abandoned, not killed (its parser may be stuck): the pool starts
//! a thread in its place, and the thread of the abandoned job ends when that job returns.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// A job's fate, decided once between its thread and its waiter.
const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

struct Job {
    work: Box<dyn FnOnce() + Send>,
    fate: Arc<Fate>,
}

/// What a job's thread and its waiter share.
struct Fate {
    state: AtomicU8,
    /// When the job started, in ms since the pool's epoch, plus one (0: still queued): the
    /// deadline counts from there, not from the queue.
    started: AtomicU64,
}

/// Why a job gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job ran past its deadline and was abandoned.
    #[error("exceeded the {0}s per-item deadline")]
    Deadline(u64),
    /// The pool is gone (the worker is shutting down) or the job panicked.
    #[error("engine thread stopped: {0}")]
    Stopped(&'static str),
}

struct Shared {
    jobs: crossbeam_channel::Receiver<Job>,
    /// The runtime the pool was started on, entered by every engine thread: a job may wait on
    /// it (MULTIMODAL classify calls its vision endpoint with `Handle::block_on`).
    runtime: Option<tokio::runtime::Handle>,
    epoch: std::time::Instant,
    /// Threads that are alive, those of abandoned jobs included.
    alive: AtomicUsize,
}

/// The pool's handle; cheap to clone.
#[derive(Clone)]
pub struct Engines {
    tx: crossbeam_channel::Sender<Job>,
    shared: Arc<Shared>,
}

impl Engines {
    /// Starts `threads` engine threads.
    pub fn start(threads: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            jobs: rx,
            runtime: tokio::runtime::Handle::try_current().ok(),
            epoch: std::time::Instant::now(),
            alive: AtomicUsize::new(0),
        });
        let engines = Self { tx, shared };
        for _ in 0..threads.max(1) {
            engines.spawn_thread();
        }
        engines
    }

    fn spawn_thread(&self) {
        let shared = self.shared.clone();
        shared.alive.fetch_add(1, Ordering::SeqCst);
        let started = std::thread::Builder::new()
            .name("docfleet-engine".into())
            .spawn(move || {
                let _runtime = shared.runtime.as_ref().map(|r| r.enter());
                while let Ok(job) = shared.jobs.recv() {
                    let ms = shared.epoch.elapsed().as_millis() as u64;
                    job.fate.started.store(ms + 1, Ordering::SeqCst);
                    (job.work)();
                    let fate = job.fate.state.compare_exchange(
                        RUNNING,
                        FINISHED,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    if fate == Err(ABANDONED) {
                        // Another thread took this one's place when the job was late.
                        break;
                    }
                }
                shared.alive.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = started {
            self.shared.alive.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(%error, "could not start an engine thread");
        }
    }

    /// Runs `f` on an engine thread and waits for its answer, at most `deadline`.
    pub async fn run<T: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let fate = Arc::new(Fate {
            state: AtomicU8::new(RUNNING),
            started: AtomicU64::new(0),
        });
        let job = Job {
            work: Box::new(move || {
                let _ = reply.send(f());
            }),
            fate: fate.clone(),
        };
        self.tx
            .send(job)
            .map_err(|_| EngineError::Stopped("the pool is closed"))?;
        let mut answer = answer;
        let mut until = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(until, &mut answer).await {
                Ok(Ok(value)) => return Ok(value),
                // The closure was dropped unanswered: it panicked.
                Ok(Err(_)) => return Err(EngineError::Stopped("the job panicked")),
                Err(_) => {}
            }
            let started = fate.started.load(Ordering::SeqCst);
            if started == 0 {
                // Still queued behind other items: its deadline has not begun.
                until = tokio::time::Instant::now() + deadline;
                continue;
            }
            let ran = self
                .shared
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(started - 1));
            if ran < deadline {
                until = tokio::time::Instant::now() + (deadline - ran);
                continue;
            }
            let abandoned = fate
                .state
                .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if abandoned {
                self.spawn_thread();
            }
            return Err(EngineError::Deadline(deadline.as_secs()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_most_threads_at_once_and_a_late_one_is_replaced() {
        let engines = Engines::start(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..8).map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            engines.run(Duration::from_secs(5), move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for r in futures_util::future::join_all(jobs).await {
            r.expect("ran");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);

        // Both threads stuck past the deadline: replacements still run the next job.
        for _ in 0..2 {
            let late = engines
                .run(Duration::from_millis(50), || {
                    std::thread::sleep(Duration::from_millis(400))
                })
                .await;
            assert!(matches!(late, Err(EngineError::Deadline(_))), "{late:?}");
        }
        let next = engines.run(Duration::from_millis(300), || 7).await;
        assert_eq!(next.expect("a replacement answered"), 7);
        // The late jobs end, and their threads with them: back to two.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = engines.run(Duration::from_secs(1), || ()).await;
        let _ = engines.run(Duration::from_secs(1), || ()).await;
        assert_eq!(engines.shared.alive.load(Ordering::SeqCst), 2);
    }
}
