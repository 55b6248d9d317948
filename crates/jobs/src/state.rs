//! Job and task states, and how a job's state follows from its tasks'. Pure.
//!
//! A task goes `blocked` (waiting for the tasks it depends on) → `runnable` → `running` →
//! `done`. A failed attempt makes it `runnable` again after a delay; the last allowed failure
//! makes it `error`, and every task that depends on it, directly or not, `unscheduled`. A
//! cancelled job makes its waiting tasks `cancelled` and its running ones `cancelling` until they
//! have stopped.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waits for the tasks it depends on.
    Blocked,
    /// May start (once its `not_before` has passed, after a failed attempt).
    Runnable,
    Running,
    Done,
    /// Its job was cancelled while it ran; it stops at its next step.
    Cancelling,
    /// Failed as many times as allowed; the error is kept in its message.
    Error,
    /// Will not run: a task it depends on failed.
    Unscheduled,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Blocked,
        TaskState::Runnable,
        TaskState::Running,
        TaskState::Done,
        TaskState::Cancelling,
        TaskState::Error,
        TaskState::Unscheduled,
        TaskState::Cancelled,
    ];

    /// The text stored in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Blocked => "blocked",
            TaskState::Runnable => "runnable",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Cancelling => "cancelling",
            TaskState::Error => "error",
            TaskState::Unscheduled => "unscheduled",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Error | TaskState::Unscheduled | TaskState::Cancelled
        )
    }

    /// A process is working on it.
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Running | TaskState::Cancelling)
    }

    /// Not started yet, and may still start.
    pub fn is_pending(self) -> bool {
        matches!(self, TaskState::Blocked | TaskState::Runnable)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// No task has started yet.
    Scheduled,
    Running,
    /// Every task is done.
    Finished,
    /// Cancelled; some tasks are still stopping.
    Cancelling,
    Cancelled,
    /// A task failed for good; tasks that do not depend on it may still be running or waiting.
    Failing,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Running,
        JobState::Finished,
        JobState::Cancelling,
        JobState::Cancelled,
        JobState::Failing,
        JobState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
            JobState::Failing => "failing",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Cancelled | JobState::Failed
        )
    }

    /// Whether the executor may start its runnable tasks.
    pub fn accepts_work(self) -> bool {
        matches!(
            self,
            JobState::Scheduled | JobState::Running | JobState::Failing
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a job whose tasks are in `tasks`; `started` tells whether any task of it has
/// ever started (a job whose first task failed once and waits to be retried is running, not
/// scheduled).
///
/// In order of precedence:
/// - a task in `error`: `failing` while other tasks are still pending or active, then `failed`;
/// - a task `cancelling` or `cancelled`: `cancelling` while any is pending or active, then
///   `cancelled`;
/// - every task `done` (or no task at all): `finished`;
/// - otherwise `running` once started, `scheduled` before.
pub fn job_state(tasks: impl IntoIterator<Item = TaskState>, started: bool) -> JobState {
    let (mut error, mut cancelled, mut unfinished, mut active_or_done) =
        (false, false, false, false);
    let mut all_done = true;
    for state in tasks {
        error |= state == TaskState::Error;
        cancelled |= matches!(state, TaskState::Cancelled | TaskState::Cancelling);
        unfinished |= state.is_pending() || state.is_active();
        active_or_done |= state.is_active() || state == TaskState::Done;
        all_done &= state == TaskState::Done;
    }
    if error {
        return if unfinished {
            JobState::Failing
        } else {
            JobState::Failed
        };
    }
    if cancelled {
        return if unfinished {
            JobState::Cancelling
        } else {
            JobState::Cancelled
        };
    }
    if all_done {
        return JobState::Finished;
    }
    if started || active_or_done {
        JobState::Running
    } else {
        JobState::Scheduled
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
        }
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(TaskState::parse("nonsense"), None);
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn a_job_is_scheduled_then_running_then_finished() {
        assert_eq!(job_state([Runnable, Blocked], false), JobState::Scheduled);
        assert_eq!(job_state([Running, Blocked], false), JobState::Running);
        assert_eq!(job_state([Done, Runnable], false), JobState::Running);
        // First task failed once and waits for its retry: still running.
        assert_eq!(job_state([Runnable, Blocked], true), JobState::Running);
        assert_eq!(job_state([Done, Done], true), JobState::Finished);
        assert_eq!(job_state([], false), JobState::Finished);
    }

    #[test]
    fn an_error_fails_the_job_once_nothing_else_runs() {
        assert_eq!(
            job_state([Error, Running, Unscheduled], true),
            JobState::Failing
        );
        assert_eq!(job_state([Error, Runnable], true), JobState::Failing);
        assert_eq!(
            job_state([Error, Done, Unscheduled], true),
            JobState::Failed
        );
        // An error wins over a cancellation.
        assert_eq!(job_state([Error, Cancelled], true), JobState::Failed);
    }

    #[test]
    fn a_cancelled_job_waits_for_its_running_tasks() {
        assert_eq!(
            job_state([Done, Cancelling, Cancelled], true),
            JobState::Cancelling
        );
        assert_eq!(
            job_state([Done, Cancelled, Cancelled], true),
            JobState::Cancelled
        );
        // A move past its cutover when the job was cancelled finishes: done, job cancelled.
        assert_eq!(
            job_state([Done, Done, Cancelled], true),
            JobState::Cancelled
        );
    }

    #[test]
    fn final_active_and_pending_partition_the_task_states() {
        for state in TaskState::ALL {
            let classes = [state.is_final(), state.is_active(), state.is_pending()];
            assert_eq!(
                classes.iter().filter(|c| **c).count(),
                1,
                "{state} is in exactly one class"
            );
        }
        assert!(JobState::Failing.accepts_work());
        assert!(!JobState::Cancelling.accepts_work());
        assert!(JobState::Failed.is_final() && !JobState::Failing.is_final());
    }
}
