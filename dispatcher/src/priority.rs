//! CPU precedence for the dispatcher over the batch work it shares a node with
//! (`realtime_priority`).

use thread_priority::unix::{
    set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
    ThreadSchedulePolicy,
};
use thread_priority::{ThreadPriority, ThreadPriorityValue};

/// The scheduler refused the priority asked for.
#[derive(Debug, thiserror::Error)]
#[error(
    "realtime_priority {priority}: SCHED_FIFO refused ({reason}); it needs CAP_SYS_NICE or an \
     RLIMIT_RTPRIO of at least {priority}, or set realtime_priority = 0"
)]
pub struct PriorityError {
    priority: u8,
    reason: String,
}

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1-99). Threads it starts later
/// inherit the policy (glibc's default), so the dispatcher calls this before its runtime
/// starts any: every thread serves requests or paces work that a request is waiting for.
pub fn realtime(priority: u8) -> Result<(), PriorityError> {
    let refused = |reason: String| PriorityError { priority, reason };
    let value = ThreadPriorityValue::try_from(priority).map_err(refused)?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| refused(format!("{e:?}")))
}
