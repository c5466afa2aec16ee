//! Training progress, one shape from the trainer to the report:
//! - a training run reports [`TrainingEvent`]s (started, a step's [`StepProgress`], a
//!   checkpoint written); the task's child process prints them as they are, one JSON line
//!   each (`worker/child/src/child_protocol.rs` adds the attempt's end);
//! - the agent stamps each step with its attempt and clock ([`v1::MetricPoint::of_step`])
//!   and appends it to the sweep's metrics stream as [`entry_fields`];
//! - the coordinator reads the entry back with [`parse_entry`] into the same
//!   [`v1::MetricPoint`]: a point of the task's curve (GetCurve, the report's figure) and
//!   its latest progress (GetSweep, `tsweep watch`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::v1;

/// One step of a training run, as the run reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProgress {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// Set on the steps that evaluated the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_score: Option<f64>,
}

/// What a training run reports while it runs. JSON: `{"event": "progress", "step": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainingEvent {
    /// Training has started (the agent marks the lease running).
    Started {
        resumed_from_step: u64,
    },
    Progress(StepProgress),
    Checkpoint {
        path: PathBuf,
        step: u64,
    },
}

impl v1::MetricPoint {
    /// A step of `attempt`, stamped with the agent's clock. Non-finite numbers (a diverged
    /// run; JSON and the report have no NaN) are left unset.
    pub fn of_step(attempt: u32, step: &StepProgress, ts_ms: i64) -> Self {
        let finite = |v: f64| Some(v).filter(|v| v.is_finite());
        v1::MetricPoint {
            attempt,
            step: step.step,
            total_steps: step.total_steps,
            loss: finite(step.loss),
            lr: finite(step.lr),
            images_per_s: finite(step.images_per_s),
            val_score: step.val_score.and_then(finite),
            ts_ms,
        }
    }
}

/// The fields of a metrics stream entry: the task, then the point (unset numbers left
/// out). [`parse_entry`] reads them back.
pub fn entry_fields(task_id: &str, point: &v1::MetricPoint) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("task_id", task_id.to_string()),
        ("attempt", point.attempt.to_string()),
        ("step", point.step.to_string()),
        ("total_steps", point.total_steps.to_string()),
        ("ts_ms", point.ts_ms.to_string()),
    ];
    let optional =
        [("loss", point.loss), ("lr", point.lr), ("images_per_s", point.images_per_s), ("val_score", point.val_score)];
    fields.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value?.to_string()))));
    fields
}

/// A metrics entry the coordinator cannot use (logged and dropped: a poison entry must
/// not block the stream).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EntryError {
    #[error("metrics entry {id}: field `{field}` is missing")]
    Missing { id: String, field: &'static str },
    #[error("metrics entry {id}: field `{field}` is not a number: {value:?}")]
    NotANumber { id: String, field: &'static str, value: String },
    #[error("metrics entry {id}: field `{field}` is {bytes} bytes, more than {limit}")]
    TooLong { id: String, field: &'static str, bytes: usize, limit: usize },
}

/// Reads the entry `id` written from [`entry_fields`], `field` giving each field's text:
/// the task id and its point. The task id and attempt are required; a missing number is
/// 0 (step, totals, clock) or unset; a non-finite one is unset.
pub fn parse_entry(id: &str, field: impl Fn(&str) -> Option<String>) -> Result<(String, v1::MetricPoint), EntryError> {
    let text = |name: &str| field(name).filter(|text| !text.trim().is_empty());
    let missing = |name: &'static str| EntryError::Missing { id: id.to_string(), field: name };
    let task_id = text("task_id").ok_or_else(|| missing("task_id"))?;
    let limit = crate::limits::MAX_ID_BYTES;
    if task_id.len() > limit {
        return Err(EntryError::TooLong { id: id.to_string(), field: "task_id", bytes: task_id.len(), limit });
    }
    let finite =
        |name: &'static str| Ok::<_, EntryError>(number::<f64>(id, name, text(name))?.filter(|v| v.is_finite()));
    let point = v1::MetricPoint {
        attempt: number(id, "attempt", text("attempt"))?.ok_or_else(|| missing("attempt"))?,
        step: number(id, "step", text("step"))?.unwrap_or(0),
        total_steps: number(id, "total_steps", text("total_steps"))?.unwrap_or(0),
        loss: finite("loss")?,
        lr: finite("lr")?,
        images_per_s: finite("images_per_s")?,
        val_score: finite("val_score")?,
        ts_ms: number(id, "ts_ms", text("ts_ms"))?.unwrap_or(0),
    };
    Ok((task_id, point))
}

fn number<T: std::str::FromStr>(id: &str, field: &'static str, text: Option<String>) -> Result<Option<T>, EntryError> {
    match text {
        None => Ok(None),
        Some(value) => {
            value.trim().parse::<T>().map(Some).map_err(|_| EntryError::NotANumber { id: id.to_string(), field, value })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(fields: &[(&str, &str)]) -> Result<(String, v1::MetricPoint), EntryError> {
        let map: HashMap<String, String> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_entry("1-0", |name| map.get(name).cloned())
    }

    #[test]
    fn a_training_event_is_one_json_line_the_child_protocol_kept() {
        let step = StepProgress { step: 4, total_steps: 20, loss: 0.5, lr: 0.01, images_per_s: 80.0, val_score: None };
        let line = serde_json::to_string(&TrainingEvent::Progress(step.clone())).unwrap();
        assert_eq!(line, r#"{"event":"progress","step":4,"total_steps":20,"loss":0.5,"lr":0.01,"images_per_s":80.0}"#);
        assert_eq!(serde_json::from_str::<TrainingEvent>(&line).unwrap(), TrainingEvent::Progress(step));
        let started: TrainingEvent = serde_json::from_str(r#"{"event":"started","resumed_from_step":3}"#).unwrap();
        assert_eq!(started, TrainingEvent::Started { resumed_from_step: 3 });
    }

    #[test]
    fn a_step_goes_to_the_stream_and_back_as_the_same_point() {
        let step = StepProgress {
            step: 40,
            total_steps: 100,
            loss: f64::NAN,
            lr: 0.1,
            images_per_s: 12.5,
            val_score: Some(0.9),
        };
        let point = v1::MetricPoint::of_step(2, &step, 1_700_000_000_000);
        assert_eq!(point.loss, None, "a NaN loss is left unset");
        let fields = entry_fields("t1", &point);
        assert!(!fields.iter().any(|(name, _)| *name == "loss"));
        let owned: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(parse(&owned).unwrap(), ("t1".to_string(), point));
    }

    #[test]
    fn a_worker_written_entry_drops_nan_and_names_a_bad_field() {
        let (task_id, point) =
            parse(&[("task_id", "t1"), ("attempt", "2"), ("step", "40"), ("loss", "NaN"), ("ts_ms", "5")]).unwrap();
        assert_eq!((task_id.as_str(), point.attempt, point.step, point.loss, point.ts_ms), ("t1", 2, 40, None, 5));
        assert_eq!(
            parse(&[("task_id", "t1")]).unwrap_err(),
            EntryError::Missing { id: "1-0".into(), field: "attempt" }
        );
        let bad = parse(&[("task_id", "t1"), ("attempt", "1"), ("step", "x")]).unwrap_err();
        assert!(bad.to_string().contains("`step`"), "{bad}");
        let long = "x".repeat(crate::limits::MAX_ID_BYTES + 1);
        assert!(matches!(parse(&[("task_id", &long), ("attempt", "1")]), Err(EntryError::TooLong { .. })));
    }
}
