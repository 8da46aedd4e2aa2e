//! Combining the records of several runs (the shards of one sweep) into one set with
//! each case once (`xarena merge`).
//!
//! A case found twice with identical records (the same file given twice) is kept once.
//! A case found twice with different records (run twice) is a conflict: the merge fails
//! unless told which to keep, the one that started last or the one of the first input.

use std::collections::HashMap;

use serde::Serialize;
use thiserror::Error;

use crate::compare::describe;
use crate::schema::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The record whose case started last (`started_at`; a tie keeps the earlier input).
    Newest,
    /// The record of the input given first.
    First,
}

/// The records of one input, with its name (the path it was read from).
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub records: Vec<Record>,
}

/// One side of a conflict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origin {
    pub input: String,
    pub run_id: String,
    pub started_at: String,
}

/// A case with different records in two places.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub case_id: String,
    pub case: String,
    /// The record kept so far, and the one that disagrees with it.
    pub kept: Origin,
    pub other: Origin,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "case {} ({}): run {} in {} and run {} in {}",
            self.case_id,
            self.case,
            self.kept.run_id,
            self.kept.input,
            self.other.run_id,
            self.other.input
        )
    }
}

#[derive(Debug, Error)]
#[error(
    "{} case(s) have different results in two inputs (pass --prefer newest or --prefer first \
     to choose):\n  {}",
    .0.len(),
    .0.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n  ")
)]
pub struct Conflicts(pub Vec<Conflict>);

#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// Each case once, in the order cases first appear in the inputs.
    pub records: Vec<Record>,
    /// Conflicts settled by the preference.
    pub resolved: Vec<Conflict>,
    /// Identical copies left out.
    pub duplicates: usize,
}

fn origin(input: &str, r: &Record) -> Origin {
    Origin {
        input: input.to_string(),
        run_id: r.run_id.clone(),
        started_at: r.started_at.clone(),
    }
}

/// Merges the inputs; with conflicts and no preference, fails naming all of them.
pub fn merge(inputs: &[Input], prefer: Option<Prefer>) -> Result<Merged, Conflicts> {
    let mut out = Merged::default();
    // Case id -> (index in out.records, name of the input it came from).
    let mut seen: HashMap<String, (usize, String)> = HashMap::new();
    let mut conflicts = Vec::new();
    for input in inputs {
        for r in &input.records {
            let Some((at, from)) = seen.get_mut(&r.case_id) else {
                seen.insert(r.case_id.clone(), (out.records.len(), input.name.clone()));
                out.records.push(r.clone());
                continue;
            };
            let kept = &mut out.records[*at];
            if kept == r {
                out.duplicates += 1;
                continue;
            }
            let conflict = Conflict {
                case_id: r.case_id.clone(),
                case: describe(r),
                kept: origin(from, kept),
                other: origin(&input.name, r),
            };
            match prefer {
                None => conflicts.push(conflict),
                Some(Prefer::First) => out.resolved.push(conflict),
                Some(Prefer::Newest) => {
                    // RFC 3339 UTC times of one format (what the runner writes) sort as
                    // text.
                    if r.started_at > kept.started_at {
                        *kept = r.clone();
                        *from = input.name.clone();
                    }
                    out.resolved.push(conflict);
                }
            }
        }
    }
    if conflicts.is_empty() {
        Ok(out)
    } else {
        Err(Conflicts(conflicts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run: &str, seq_len: i64, started_at: &str) -> Record {
        let line = include_str!("../../docs/results/cpu-quick/results.jsonl")
            .lines()
            .next()
            .unwrap();
        let mut r: Record = serde_json::from_str(line).unwrap();
        r.run_id = run.into();
        r.key.seq_len = seq_len;
        r.case_id = r.key.id();
        r.started_at = started_at.into();
        r
    }

    fn input(name: &str, records: Vec<Record>) -> Input {
        Input {
            name: name.into(),
            records,
        }
    }

    #[test]
    fn disjoint_shards_merge_into_every_case_once() {
        let a = input("a", vec![record("ra", 1, "t1"), record("ra", 3, "t1")]);
        let b = input("b", vec![record("rb", 2, "t2")]);
        // The same shard given twice adds nothing.
        let m = merge(&[a.clone(), b, a], None).unwrap();
        let seqs: Vec<i64> = m.records.iter().map(|r| r.key.seq_len).collect();
        assert_eq!(seqs, vec![1, 3, 2]);
        assert_eq!(m.duplicates, 2);
        assert!(m.resolved.is_empty());
    }

    #[test]
    fn different_results_for_a_case_conflict_unless_a_preference_is_given() {
        let a = input("a", vec![record("ra", 1, "2026-01-01T00:00:02.000Z")]);
        let b = input("b", vec![record("rb", 1, "2026-01-01T00:00:01.000Z")]);
        let err = merge(&[a.clone(), b.clone()], None).unwrap_err();
        assert_eq!(err.0.len(), 1);
        let text = err.to_string();
        assert!(text.contains("run ra in a and run rb in b"), "{text}");
        assert!(text.contains("--prefer"), "{text}");

        let first = merge(&[b.clone(), a.clone()], Some(Prefer::First)).unwrap();
        assert_eq!(first.records.len(), 1);
        assert_eq!(first.records[0].run_id, "rb");
        assert_eq!(first.resolved.len(), 1);

        // Whichever comes first, the later start wins.
        for order in [[a.clone(), b.clone()], [b, a]] {
            let newest = merge(&order, Some(Prefer::Newest)).unwrap();
            assert_eq!(newest.records.len(), 1);
            assert_eq!(newest.records[0].run_id, "ra");
        }
    }
}
