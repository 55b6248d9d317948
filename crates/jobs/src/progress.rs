//! A job's progress in bytes and the time it probably still needs. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::state::TaskState;

/// What progress needs to know of one task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskProgress {
    pub state: TaskState,
    /// The planned size of what the task transfers.
    pub bytes_total: i64,
    /// `(bytes_done, bytes_total)` of its transfer running now, as the transfer measures them.
    pub transfer: Option<(i64, i64)>,
}

impl TaskProgress {
    /// Planned bytes done: all of a done task, the transfer's share of a running one.
    pub fn bytes_done(&self) -> i64 {
        match (self.state, self.transfer) {
            (TaskState::Done, _) => self.bytes_total,
            (TaskState::Running | TaskState::Cancelling, Some((done, total))) if total > 0 => {
                let share = (done.max(0) as f64 / total as f64).min(1.0);
                (self.bytes_total as f64 * share) as i64
            }
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobProgress {
    /// Number of tasks in each state (states with none are left out).
    pub tasks: BTreeMap<TaskState, usize>,
    pub bytes_total: i64,
    pub bytes_done: i64,
    /// What the tasks that may still run have left to transfer.
    pub bytes_left: i64,
    /// At the rate so far; `None` before anything was transferred or once nothing is left.
    pub seconds_left: Option<f64>,
}

/// Sums the tasks' progress; `elapsed` is how long the job has been running.
///
/// Bytes are the planned sizes (the sizes measured when the job was planned), so the total does
/// not move while the job runs; a running transfer counts for the share it reports done.
pub fn job_progress(tasks: &[TaskProgress], elapsed: Option<Duration>) -> JobProgress {
    let mut by_state: BTreeMap<TaskState, usize> = BTreeMap::new();
    let (mut total, mut done, mut left) = (0i64, 0i64, 0i64);
    for task in tasks {
        *by_state.entry(task.state).or_default() += 1;
        total += task.bytes_total;
        let task_done = task.bytes_done();
        done += task_done;
        if task.state.is_pending() || task.state.is_active() {
            left += (task.bytes_total - task_done).max(0);
        }
    }
    let seconds_left = match elapsed {
        Some(elapsed) if done > 0 && left > 0 && !elapsed.is_zero() => {
            Some(left as f64 / (done as f64 / elapsed.as_secs_f64()))
        }
        _ => None,
    };
    JobProgress {
        tasks: by_state,
        bytes_total: total,
        bytes_done: done,
        bytes_left: left,
        seconds_left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState, bytes_total: i64, transfer: Option<(i64, i64)>) -> TaskProgress {
        TaskProgress {
            state,
            bytes_total,
            transfer,
        }
    }

    #[test]
    fn sums_done_running_and_waiting_tasks() {
        let tasks = [
            task(TaskState::Done, 100, Some((40, 40))),
            task(TaskState::Running, 200, Some((25, 50))),
            task(TaskState::Blocked, 300, None),
        ];
        let progress = job_progress(&tasks, Some(Duration::from_secs(10)));
        assert_eq!(progress.bytes_total, 600);
        assert_eq!(progress.bytes_done, 200);
        assert_eq!(progress.bytes_left, 400);
        // 200 bytes in 10 s: 400 more take 20 s.
        assert_eq!(progress.seconds_left, Some(20.0));
        assert_eq!(progress.tasks[&TaskState::Running], 1);
        assert!(!progress.tasks.contains_key(&TaskState::Error));
    }

    #[test]
    fn failed_and_cancelled_tasks_leave_nothing_left() {
        let tasks = [
            task(TaskState::Done, 100, None),
            task(TaskState::Error, 200, Some((10, 50))),
            task(TaskState::Unscheduled, 300, None),
            task(TaskState::Cancelled, 300, None),
        ];
        let progress = job_progress(&tasks, Some(Duration::from_secs(5)));
        assert_eq!(progress.bytes_done, 100);
        assert_eq!(progress.bytes_left, 0);
        assert_eq!(progress.seconds_left, None);
    }

    #[test]
    fn no_estimate_before_any_progress_and_shares_are_capped() {
        let tasks = [task(TaskState::Running, 100, Some((0, 0)))];
        assert_eq!(
            job_progress(&tasks, Some(Duration::from_secs(1))).seconds_left,
            None
        );
        // A transfer measures more than it planned (indexes, bloat): never above its total.
        let over = task(TaskState::Running, 100, Some((90, 60)));
        assert_eq!(over.bytes_done(), 100);
        assert_eq!(job_progress(&[], None).bytes_total, 0);
    }
}
