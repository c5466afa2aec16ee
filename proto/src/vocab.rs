//! The wire's vocabulary by name: task state, sweep status, regime, stage, metric and
//! failure class are enums of `tsweep.v1`, and this module is the one place that maps each value to the
//! lowercase name it has in Redis, logs, the CLI, CSV/JSON and the sweep file
//! (`TASK_STATE_PENDING` is "pending"). Serde reads and writes these names, so a cell spec
//! or a sweep file says `regime = "linear"`, and an unknown name is refused with the list
//! of known ones.

use crate::v1::{FailureClass, Metric, Regime, Stage, SweepStatus, TaskState};

/// Names, `ALL`, `from_name`, `Display` and serde by name for a `tsweep.v1` enum. `ALL`
/// and `from_name` leave out `Unspecified` (what an unset field or an unknown number
/// decodes to); `name` calls it "unspecified".
macro_rules! named {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value but `Unspecified`, in wire order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];
            /// The names of [`Self::ALL`], in the same order.
            pub const NAMES: [&'static str; [$($name),+].len()] = [$($name),+];

            /// Lowercase name used in Redis, logs, the CLI, CSV/JSON and the sweep file.
            pub fn name(self) -> &'static str {
                match self {
                    $ty::Unspecified => "unspecified",
                    $($ty::$variant => $name,)+
                }
            }

            /// The value of a name from [`Self::NAMES`]; None for any other.
            pub fn from_name(name: &str) -> Option<$ty> {
                match name {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $ty::from_name(&name)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&name, &$ty::NAMES))
            }
        }
    };
}

named!(TaskState {
    Pending => "pending",
    Leased => "leased",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

named!(SweepStatus {
    Active => "active",
    Done => "done",
    Cancelled => "cancelled",
    Submitting => "submitting",
    Deleting => "deleting",
});

named!(Regime {
    Linear => "linear",
    Finetune => "finetune",
    Scratch => "scratch",
});

named!(Stage {
    Grid => "grid",
    Final => "final",
    Pretrain => "pretrain",
});

named!(FailureClass {
    Retryable => "retryable",
    Fatal => "fatal",
    LostWorker => "lost_worker",
    Preempted => "preempted",
    OutOfMemory => "out_of_memory",
});

named!(Metric {
    Top1 => "top1",
    MeanPerClass => "mean_per_class",
    Map11 => "map11",
});

impl TaskState {
    /// Succeeded, failed or cancelled: nothing happens to the task unless a user retries it.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

impl SweepStatus {
    /// Whether the sweep has ended: done (nothing pending, leased or running) or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(self, SweepStatus::Done | SweepStatus::Cancelled)
    }
}

/// `TaskResult.metric` (an `i32` field in the generated struct) as its name in JSON, so the
/// results the store keeps read as `"metric": "top1"`. Reading is lenient: a result that
/// names no metric (`"unspecified"`, or `""` as results recorded before protocol 3 could)
/// or one this version does not know reads as unspecified, never as a corrupt result.
pub(crate) mod metric_field {
    use super::Metric;

    pub fn serialize<S: serde::Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&Metric::try_from(*value).unwrap_or_default(), serializer)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
        let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        Ok(Metric::from_name(&name).unwrap_or_default().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unspecified_has_no_name_to_parse() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::from_name(state.name()), Some(state));
        }
        for status in SweepStatus::ALL {
            assert_eq!(SweepStatus::from_name(status.name()), Some(status));
        }
        for regime in Regime::ALL {
            assert_eq!(Regime::from_name(&regime.to_string()), Some(regime));
        }
        assert_eq!(Stage::NAMES, ["grid", "final", "pretrain"]);
        assert_eq!(Metric::from_name("mean_per_class"), Some(Metric::MeanPerClass));
        assert_eq!(TaskState::Unspecified.name(), "unspecified");
        assert_eq!(TaskState::from_name("unspecified"), None);
        assert!(TaskState::Cancelled.is_terminal() && !TaskState::Running.is_terminal());
        assert!(SweepStatus::Done.is_finished() && !SweepStatus::Submitting.is_finished());
    }

    #[test]
    fn serde_uses_the_names_and_lists_them_when_refusing_one() {
        assert_eq!(serde_json::to_string(&Regime::Finetune).unwrap(), "\"finetune\"");
        assert_eq!(serde_json::from_str::<Metric>("\"map11\"").unwrap(), Metric::Map11);
        let err = serde_json::from_str::<Regime>("\"scrach\"").unwrap_err().to_string();
        assert!(err.contains("unknown variant `scrach`, expected one of `linear`, `finetune`, `scratch`"), "{err}");
        let result = crate::v1::TaskResult { metric: Metric::Top1.into(), ..Default::default() };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["metric"], "top1");
        let back: crate::v1::TaskResult = serde_json::from_value(json).unwrap();
        assert_eq!(back.metric(), Metric::Top1);
        // A result without a metric round-trips, and older records' "" reads as unspecified.
        let none = serde_json::to_string(&crate::v1::TaskResult::default()).unwrap();
        assert_eq!(serde_json::from_str::<crate::v1::TaskResult>(&none).unwrap().metric(), Metric::Unspecified);
        let old: crate::v1::TaskResult = serde_json::from_str(r#"{"metric": "", "val_score": 0.5}"#).unwrap();
        assert_eq!((old.metric(), old.val_score), (Metric::Unspecified, Some(0.5)));
    }
}
