//! Acknowledgements, coalesced: deliveries whose outcome is recorded are acked in runs, one
//! `basic.ack` with `multiple` per run instead of one frame each.
//!
//! Every delivery on a channel gets the next tag, starting at 1, and this worker handles every
//! delivery it reads, so the acks that can be sent together are a contiguous run from the
//! lowest unsettled tag. A run is cut where an item is still in flight; an acked item waiting
//! behind a slow one longer than [`LINGER`] is acked alone, so one long document never holds
//! the prefetch window full. Requeues and dead-letters go out at once, alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::mpsc;

use crate::item::Verdict;

/// How long the acker lets completions gather after the first one wakes it.
const GATHER: Duration = Duration::from_millis(2);
/// How long an ack may wait behind an unsettled lower tag before it is sent alone.
const LINGER: Duration = Duration::from_millis(50);

/// The sending side, one per channel; cheap to clone.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<(u64, Verdict)>,
}

impl Acker {
    /// Starts the task that settles deliveries on `channel`. It ends, after sending every
    /// pending ack, when the last `Acker` is dropped; await the handle before closing the
    /// channel.
    pub fn start(channel: Channel) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(channel, rx)))
    }

    /// Settles delivery `tag`: ack, requeue or dead-letter. Call only after the outcome is
    /// recorded.
    pub fn settle(&self, tag: u64, verdict: Verdict) {
        // The task lives as long as any sender; a send fails only if it panicked, and then
        // the channel closes and the broker redelivers.
        let _ = self.tx.send((tag, verdict));
    }
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<(u64, Verdict)>) {
    let mut window = Window::default();
    loop {
        let next = if window.waiting() {
            match tokio::time::timeout(LINGER, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    send(&channel, window.flush(Instant::now())).await;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some((tag, verdict)) = next else { break };
        let mut frames = window.settle(tag, verdict, Instant::now());
        tokio::time::sleep(GATHER).await;
        while let Ok((tag, verdict)) = rx.try_recv() {
            frames.extend(window.settle(tag, verdict, Instant::now()));
        }
        frames.extend(window.flush(Instant::now()));
        send(&channel, frames).await;
    }
    // Draining: whatever is left is acked now, run or not.
    send(&channel, window.flush(Instant::now() + LINGER)).await;
}

/// One frame to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// `basic.ack`; `multiple` covers every unsettled tag up to this one.
    Ack {
        tag: u64,
        multiple: bool,
    },
    Requeue(u64),
    DeadLetter(u64),
}

async fn send(channel: &Channel, frames: Vec<Frame>) {
    for frame in frames {
        let result = match frame {
            Frame::Ack { tag, multiple } => {
                channel.basic_ack(tag, BasicAckOptions { multiple }).await
            }
            Frame::Requeue(tag) => {
                channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        },
                    )
                    .await
            }
            Frame::DeadLetter(tag) => {
                channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await
            }
        };
        if let Err(error) = result {
            // The channel died after the outcome was recorded: the broker redelivers, and the
            // claim script recognises the settled item and acks it without work.
            tracing::warn!(%error, ?frame, "Could not settle a delivery.");
            return;
        }
    }
}

/// Which tags are settled with the broker and which acks are still to send.
#[derive(Default)]
struct Window {
    /// Every tag up to this one is settled with the broker.
    through: u64,
    /// Acks not yet sent, above `through`, with when their outcome was recorded.
    pending: BTreeMap<u64, Instant>,
    /// Tags above `through` already settled alone.
    sent: BTreeSet<u64>,
}

impl Window {
    fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes one verdict, given at `now`; returns the frames that must go out at once.
    fn settle(&mut self, tag: u64, verdict: Verdict, now: Instant) -> Vec<Frame> {
        match verdict {
            Verdict::Ack => {
                self.pending.insert(tag, now);
                Vec::new()
            }
            Verdict::Requeue => {
                self.sent.insert(tag);
                vec![Frame::Requeue(tag)]
            }
            Verdict::DeadLetter => {
                self.sent.insert(tag);
                vec![Frame::DeadLetter(tag)]
            }
        }
    }

    /// The acks to send now: the contiguous run from the lowest unsettled tag as one
    /// `multiple` ack, then, alone, every pending ack older than [`LINGER`] at `now`.
    fn flush(&mut self, now: Instant) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut top = None;
        loop {
            let next = self.through + 1;
            if self.pending.remove(&next).is_some() {
                top = Some(next);
            } else if !self.sent.remove(&next) {
                break;
            }
            self.through = next;
        }
        if let Some(tag) = top {
            frames.push(Frame::Ack {
                tag,
                multiple: true,
            });
        }
        let aged: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= LINGER)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in aged {
            self.pending.remove(&tag);
            self.sent.insert(tag);
            frames.push(Frame::Ack {
                tag,
                multiple: false,
            });
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(tag: u64, multiple: bool) -> Frame {
        Frame::Ack { tag, multiple }
    }

    #[test]
    fn a_contiguous_run_goes_out_as_one_frame() {
        let mut w = Window::default();
        for tag in [3, 1, 2] {
            assert!(w.settle(tag, Verdict::Ack, Instant::now()).is_empty());
        }
        assert_eq!(w.flush(Instant::now()), vec![ack(3, true)]);
        assert!(!w.waiting());
    }

    #[test]
    fn a_run_stops_at_an_item_in_flight_and_aged_acks_go_alone() {
        let mut w = Window::default();
        let t0 = Instant::now();
        for tag in [1, 3, 4] {
            w.settle(tag, Verdict::Ack, t0);
        }
        // 2 is still running: only 1 goes, 3 and 4 wait.
        assert_eq!(w.flush(t0), vec![ack(1, true)]);
        assert!(w.waiting());
        // Behind a slow item for too long, they are acked one by one.
        assert_eq!(w.flush(t0 + LINGER), vec![ack(3, false), ack(4, false)]);
        assert!(!w.waiting());
        // When 2 ends, the window moves past the tags already settled.
        w.settle(5, Verdict::Ack, t0 + LINGER);
        w.settle(2, Verdict::Ack, t0 + LINGER);
        assert_eq!(w.flush(t0 + LINGER), vec![ack(5, true)]);
        assert_eq!(w.through, 5);
    }

    #[test]
    fn requeues_and_dead_letters_go_at_once_and_runs_pass_them() {
        let (mut w, now) = (Window::default(), Instant::now());
        assert_eq!(w.settle(2, Verdict::Requeue, now), vec![Frame::Requeue(2)]);
        assert_eq!(
            w.settle(3, Verdict::DeadLetter, now),
            vec![Frame::DeadLetter(3)]
        );
        w.settle(1, Verdict::Ack, now);
        w.settle(4, Verdict::Ack, now);
        // A multiple ack up to 4 leaves 2 and 3 alone: the broker no longer holds them.
        assert_eq!(w.flush(now), vec![ack(4, true)]);
        assert_eq!(w.through, 4);
    }
}
