//! Halt on failures (issue 15 item 3): when `halt_failures` (K) of the
//! first `halt_first` (N) children of a task that ended failed with the
//! same result code, the task's children that did not start yet are held,
//! each reported upstream with a description that says why, until an
//! operator releases the task (`otabridge jobs release TASK`).
//!
//! So that a bad image reaches at most K children, a task's first N
//! children go through a canary gate before their delivery: a child
//! starts only while the children in flight plus the worst same-code
//! failure count stay below K. Once N children ended without such a
//! streak, the gate is open for the rest of the task.
//!
//! The decision is taken from the journal alone (the task's jobs, read by
//! the event's `task_id`), plus the jobs this process let through the gate
//! before they acknowledged a byte: a restart rebuilds it, and a held job
//! stays held (its `held` column). A child has *started* once it
//! acknowledged a byte of the image or was activated; cancelled jobs do
//! not count as failures. Jobs without a `task_id` are not gated.

use std::collections::{BTreeMap, HashSet};

use rusqlite::params;

use super::job::Phase;
use crate::journal::{Journal, JournalError};

/// `[ota] halt_failures` and `halt_first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltPolicy {
    /// K: this many failures with one code halt the task (0: never).
    pub failures: u32,
    /// N: among the first this many children of the task that ended.
    pub first: u32,
}

impl HaltPolicy {
    /// Whether it is on.
    pub fn is_on(self) -> bool {
        self.failures > 0
    }
}

/// A task's jobs as the journal has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskJobs {
    /// Result codes of the ended jobs, in the order they ended (cancelled
    /// jobs left out).
    pub ended: Vec<u8>,
    /// Jobs not ended that started (a byte acknowledged, or activated).
    pub started: Vec<i64>,
    /// Jobs not ended that are held.
    pub held: Vec<i64>,
    /// Whether an operator released the task.
    pub released: bool,
    /// How many jobs the task has, in any state.
    pub all: usize,
}

/// The meta key that records a task's release.
fn released_key(task: &str) -> String {
    format!("task_released:{task}")
}

/// Reads task `task`'s jobs.
pub fn task_jobs(j: &mut Journal, task: &str) -> Result<TaskJobs, JournalError> {
    let released = is_released(j, task)?;
    let conn = j.connection();
    let read = || -> rusqlite::Result<TaskJobs> {
        // The journal's SQLite is built without its JSON functions
        // (.cargo/config.toml): the events that hold the task id as a JSON
        // string are found with `instr`, and their `task_id` checked here.
        let mut st = conn.prepare_cached(
            "SELECT id, phase, result_code, control, held, acked_offset, activations, event
             FROM jobs WHERE instr(event, ?1) > 0
             ORDER BY updated_unix, id",
        )?;
        let mut out = TaskJobs {
            released,
            ..TaskJobs::default()
        };
        let quoted = serde_json::Value::from(task).to_string();
        let mut rows = st.query(params![quoted])?;
        while let Some(r) = rows.next()? {
            let event: String = r.get(7)?;
            let of_task = serde_json::from_str::<serde_json::Value>(&event)
                .is_ok_and(|e| e.get("task_id").and_then(|t| t.as_str()) == Some(task));
            if !of_task {
                continue;
            }
            let id: i64 = r.get(0)?;
            out.all += 1;
            let phase = Phase::parse(&r.get::<_, String>(1)?).unwrap_or(Phase::Failed);
            let code: Option<i64> = r.get(2)?;
            let control: Option<String> = r.get(3)?;
            let held: Option<String> = r.get(4)?;
            let offset: i64 = r.get(5)?;
            let activations: i64 = r.get(6)?;
            if phase.is_terminal() {
                if control.as_deref() != Some("cancel") {
                    out.ended.push(code.unwrap_or(0).clamp(0, 255) as u8);
                }
            } else if held.is_some() {
                out.held.push(id);
            } else if offset > 0
                || activations > 0
                || matches!(
                    phase,
                    Phase::Activating | Phase::Verifying | Phase::Confirming
                )
            {
                out.started.push(id);
            }
        }
        Ok(out)
    };
    let r = read();
    r.map_err(|e| j.err(e))
}

/// Whether an operator released task `task`.
pub fn is_released(j: &mut Journal, task: &str) -> Result<bool, JournalError> {
    Ok(j.meta_get(&released_key(task))?.is_some())
}

/// Records that an operator released task `task`: the policy no longer
/// holds its children.
pub fn release(j: &mut Journal, task: &str) -> Result<(), JournalError> {
    j.meta_set(&released_key(task), "1")
}

/// What a child of a task may do before its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start.
    Go,
    /// Wait for another child of the task to end (the canary gate).
    Wait,
    /// Hold, for this reason, until the task is released.
    Hold(String),
}

/// Whether job `me` of task `task` may start, under `policy`, given the
/// task's jobs and those let through in this process (`admitted`).
pub fn decide(
    policy: HaltPolicy,
    task: &str,
    jobs: &TaskJobs,
    admitted: &HashSet<i64>,
    me: i64,
) -> Decision {
    if !policy.is_on() || jobs.released {
        return Decision::Go;
    }
    let first = &jobs.ended[..jobs.ended.len().min(policy.first as usize)];
    let mut by_code: BTreeMap<u8, u32> = BTreeMap::new();
    for &c in first.iter().filter(|c| **c != 0) {
        *by_code.entry(c).or_default() += 1;
    }
    let (code, worst) = by_code
        .iter()
        .max_by_key(|(c, n)| (**n, std::cmp::Reverse(**c)))
        .map_or((0, 0), |(c, n)| (*c, *n));
    if worst >= policy.failures {
        let desc = otabridge_codecs::iotda::ResultCode::new(code).map_or("", |c| c.description());
        return Decision::Hold(format!(
            "{worst} of the first {} children of task {task} that ended failed with result \
             {code} ({desc}); held until an operator releases the task \
             (otabridge jobs release {task})",
            first.len()
        ));
    }
    if first.len() >= policy.first as usize {
        return Decision::Go;
    }
    let in_flight: HashSet<i64> = jobs
        .started
        .iter()
        .chain(admitted.iter())
        .copied()
        .filter(|id| *id != me)
        .collect();
    if in_flight.len() as u32 + worst < policy.failures {
        Decision::Go
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: HaltPolicy = HaltPolicy {
        failures: 2,
        first: 4,
    };

    fn jobs(ended: &[u8], started: &[i64]) -> TaskJobs {
        TaskJobs {
            ended: ended.to_vec(),
            started: started.to_vec(),
            ..TaskJobs::default()
        }
    }

    #[test]
    fn k_same_code_failures_among_the_first_n_hold_the_rest() {
        let none = HashSet::new();
        assert_eq!(decide(P, "t", &jobs(&[], &[]), &none, 9), Decision::Go);
        // One failure: one child in flight at most (1 + 1 = K).
        assert_eq!(decide(P, "t", &jobs(&[10], &[]), &none, 9), Decision::Go);
        assert_eq!(decide(P, "t", &jobs(&[10], &[3]), &none, 9), Decision::Wait);
        // Two different codes are no streak.
        assert_eq!(decide(P, "t", &jobs(&[10, 7], &[]), &none, 9), Decision::Go);
        match decide(P, "t", &jobs(&[10, 0, 10], &[]), &none, 9) {
            Decision::Hold(why) => {
                assert!(why.contains("2 of the first 3 children of task t"), "{why}");
                assert!(why.contains("result 10 (Firmware update failed)"), "{why}");
                assert!(why.contains("otabridge jobs release t"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Failures after the first N do not count, and the gate is open.
        assert_eq!(
            decide(P, "t", &jobs(&[0, 0, 0, 0, 10, 10], &[1, 2, 3]), &none, 9),
            Decision::Go
        );
        // A released task is never held.
        let mut released = jobs(&[10, 10], &[]);
        released.released = true;
        assert_eq!(decide(P, "t", &released, &none, 9), Decision::Go);
        // Off.
        let off = HaltPolicy {
            failures: 0,
            first: 4,
        };
        assert_eq!(
            decide(off, "t", &jobs(&[10, 10], &[]), &none, 9),
            Decision::Go
        );
    }

    #[test]
    fn the_canary_gate_counts_children_in_flight() {
        // K = 2: two in flight, not a third.
        let admitted: HashSet<i64> = [1].into();
        assert_eq!(decide(P, "t", &jobs(&[], &[]), &admitted, 2), Decision::Go);
        let admitted: HashSet<i64> = [1, 2].into();
        assert_eq!(
            decide(P, "t", &jobs(&[], &[2]), &admitted, 3),
            Decision::Wait
        );
        // A job does not wait for itself.
        assert_eq!(decide(P, "t", &jobs(&[], &[2]), &admitted, 2), Decision::Go);
    }

    #[test]
    fn the_journal_tells_ended_started_and_held_jobs_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let ev = |task: &str| {
            format!("{{\"version\":\"2\",\"url\":\"u\",\"file_size\":1,\"task_id\":\"{task}\"}}")
        };
        // (task, phase, result code, control, held, acknowledged offset)
        type Row<'a> = (
            &'a str,
            &'a str,
            Option<i64>,
            Option<&'a str>,
            Option<&'a str>,
            i64,
        );
        let rows: [Row<'_>; 6] = [
            ("t", "failed", Some(10), None, None, 0),
            ("t", "failed", Some(255), Some("cancel"), None, 0),
            ("t", "delivering", None, None, None, 4096),
            ("t", "queued", None, None, Some("why"), 0),
            ("t", "downloading", None, None, None, 0),
            ("other", "failed", Some(10), None, None, 0),
        ];
        for (i, (task, phase, code, control, held, off)) in rows.iter().enumerate() {
            j.connection()
                .execute(
                    "INSERT INTO jobs (device_id, kind, v2, event, received_unix, deadline_unix,
                        target, size, phase, result_code, control, held, acked_offset, updated_unix)
                     VALUES (?1, 'firmware', 0, ?2, 0, 99, '2', 1, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        format!("c{i}"),
                        ev(task),
                        phase,
                        code,
                        control,
                        held,
                        off,
                        i as i64
                    ],
                )
                .unwrap();
        }
        // Another task whose event names "t" elsewhere is not task t's.
        j.connection()
            .execute(
                "INSERT INTO jobs (device_id, kind, v2, event, received_unix, deadline_unix,
                    target, size, phase, result_code, acked_offset, updated_unix)
                 VALUES ('x', 'firmware', 0, ?1, 0, 99, '2', 1, 'failed', 10, 0, 99)",
                params![
                    r#"{"version":"2","url":"u","file_size":1,"task_id":"u","custom_info":"t"}"#
                ],
            )
            .unwrap();
        let t = task_jobs(&mut j, "t").unwrap();
        assert_eq!(t.ended, vec![10]);
        assert_eq!(t.started, vec![3]);
        assert_eq!(t.held, vec![4]);
        assert!(!t.released);
        release(&mut j, "t").unwrap();
        assert!(task_jobs(&mut j, "t").unwrap().released);
        assert!(!task_jobs(&mut j, "other").unwrap().released);
    }
}
