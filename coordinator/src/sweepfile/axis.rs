//! Hyperparameter axes: `[a, b, ...]`, `{ logspace = [a, b, n] }` (10^a..10^b, n points),
//! `{ linspace = [a, b, n] }`, or a union of these in one table
//! (`{ values = [0.0], logspace = [-6, -3, 7] }`); a bare number is a one-point axis.
//! [`BoolAxis`]: `true`, `false` or a list of them (`bn_scale = [true, false]`).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// An axis as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub values: Vec<f64>,
    pub logspace: Option<[f64; 3]>,
    pub linspace: Option<[f64; 3]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisTable {
    #[serde(default)]
    values: Vec<f64>,
    logspace: Option<[f64; 3]>,
    linspace: Option<[f64; 3]>,
}

impl<'de> Deserialize<'de> for Axis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AxisVisitor;
        impl<'de> Visitor<'de> for AxisVisitor {
            type Value = Axis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a number, a list of numbers or a table with `values`, `logspace = [a, b, n]` and/or `linspace = [a, b, n]`",
                )
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Axis, E> {
                Ok(Axis { values: vec![v], logspace: None, linspace: None })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Axis, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Axis, E> {
                self.visit_f64(v as f64)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Axis, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<f64>()? {
                    values.push(v);
                }
                Ok(Axis { values, logspace: None, linspace: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Axis, A::Error> {
                let table = AxisTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Axis { values: table.values, logspace: table.logspace, linspace: table.linspace })
            }
        }
        deserializer.deserialize_any(AxisVisitor)
    }
}

/// An axis of booleans as written: `true`, `false` or a list of them.
#[derive(Debug, Clone, PartialEq)]
pub struct BoolAxis(pub Vec<bool>);

impl<'de> Deserialize<'de> for BoolAxis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoolVisitor;
        impl<'de> Visitor<'de> for BoolVisitor {
            type Value = BoolAxis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a list of them")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BoolAxis, E> {
                Ok(BoolAxis(vec![v]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoolAxis, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<bool>()? {
                    values.push(v);
                }
                Ok(BoolAxis(values))
            }
        }
        deserializer.deserialize_any(BoolVisitor)
    }
}

impl BoolAxis {
    /// The distinct values, `true` first (the neutral setting first); empty is an error.
    pub fn points(&self) -> Result<Vec<bool>, AxisError> {
        let mut points: Vec<bool> = Vec::new();
        for v in [true, false] {
            if self.0.contains(&v) {
                points.push(v);
            }
        }
        if points.is_empty() {
            return Err(AxisError::Empty);
        }
        Ok(points)
    }
}

/// What is wrong with an axis (the caller adds file, line and field).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AxisError {
    #[error("{kind} = [{a}, {b}, {n}]: the point count n must be a whole number >= 1")]
    BadCount { kind: &'static str, a: f64, b: f64, n: f64 },
    #[error("{kind} = [{a}, {b}, {n}]: the bounds must be finite")]
    BadBounds { kind: &'static str, a: f64, b: f64, n: f64 },
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    #[error("the axis has no values")]
    Empty,
    #[error("{count} points are too many for one axis (at most {max})")]
    TooManyPoints { count: f64, max: u64 },
}

/// Points allowed in one range; larger axes are almost certainly a typo.
const MAX_POINTS_PER_RANGE: u64 = 1_000_000;

impl Axis {
    /// The axis's distinct values, ascending, each rounded to 12 significant digits so
    /// that `logspace = [-4, -1, 7]` gives exactly 0.0001 (stable task ids everywhere).
    pub fn points(&self) -> Result<Vec<f64>, AxisError> {
        let mut points = Vec::new();
        for &v in &self.values {
            if !v.is_finite() {
                return Err(AxisError::NotFinite(v));
            }
            points.push(canonical(v));
        }
        if let Some(range) = self.logspace {
            for exponent in spaced("logspace", range)? {
                let v = 10f64.powf(exponent);
                if !v.is_finite() {
                    return Err(AxisError::NotFinite(v));
                }
                points.push(canonical(v));
            }
        }
        if let Some(range) = self.linspace {
            for v in spaced("linspace", range)? {
                points.push(canonical(v));
            }
        }
        points.sort_by(f64::total_cmp);
        points.dedup();
        if points.is_empty() {
            return Err(AxisError::Empty);
        }
        Ok(points)
    }
}

fn spaced(kind: &'static str, [a, b, n]: [f64; 3]) -> Result<Vec<f64>, AxisError> {
    if !a.is_finite() || !b.is_finite() {
        return Err(AxisError::BadBounds { kind, a, b, n });
    }
    if !(n >= 1.0 && n.fract() == 0.0) {
        return Err(AxisError::BadCount { kind, a, b, n });
    }
    if n > MAX_POINTS_PER_RANGE as f64 {
        return Err(AxisError::TooManyPoints { count: n, max: MAX_POINTS_PER_RANGE });
    }
    let count = n as u64;
    if count == 1 {
        return Ok(vec![a]);
    }
    let step = (b - a) / (count - 1) as f64;
    Ok((0..count).map(|i| if i == count - 1 { b } else { a + step * i as f64 }).collect())
}

/// Rounds to 12 significant digits and turns -0 into 0.
pub fn canonical(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { 0.0 } else { v };
    }
    format!("{v:.11e}").parse::<f64>().unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(text: &str) -> Axis {
        #[derive(Deserialize)]
        struct Doc {
            a: Axis,
        }
        toml::from_str::<Doc>(&format!("a = {text}")).unwrap().a
    }

    #[test]
    fn logspace_gives_exact_decades() {
        let points = axis("{ logspace = [-4, -1, 7] }").points().unwrap();
        assert_eq!(points.len(), 7);
        assert_eq!(points[0], 0.0001);
        assert_eq!(points[2], 0.001);
        assert_eq!(points[6], 0.1);
    }

    #[test]
    fn paper_l2_path_has_45_values_from_1e_minus6_to_1e5() {
        let points = axis("{ logspace = [-6, 5, 45] }").points().unwrap();
        assert_eq!(points.len(), 45);
        assert_eq!(points[0], 1e-6);
        assert_eq!(points[44], 1e5);
    }

    #[test]
    fn union_of_values_and_logspace_is_sorted_and_deduplicated() {
        let points = axis("{ values = [0.0, 0.001], logspace = [-6, -3, 7] }").points().unwrap();
        assert_eq!(points.len(), 8);
        assert_eq!(points[0], 0.0);
        assert_eq!(points[7], 0.001);
    }

    #[test]
    fn list_and_linspace() {
        assert_eq!(axis("[3, 1, 2, 2]").points().unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(axis("{ linspace = [0, 1, 5] }").points().unwrap(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(axis("{ logspace = [-1.5, -1.5, 1] }").points().unwrap(), vec![canonical(10f64.powf(-1.5))]);
    }

    #[test]
    fn a_bare_number_is_a_one_point_axis_and_bools_make_a_bool_axis() {
        assert_eq!(axis("0.1").points().unwrap(), vec![0.1]);
        assert_eq!(axis("600").points().unwrap(), vec![600.0]);
        #[derive(Deserialize)]
        struct Doc {
            b: BoolAxis,
        }
        let bools = |text: &str| toml::from_str::<Doc>(&format!("b = {text}")).map(|d| d.b.points());
        assert_eq!(bools("false").unwrap(), Ok(vec![false]));
        assert_eq!(bools("[false, true, false]").unwrap(), Ok(vec![true, false]));
        assert_eq!(bools("[]").unwrap(), Err(AxisError::Empty));
        assert!(bools("1").is_err());
    }

    #[test]
    fn bad_axes_are_refused() {
        assert_eq!(axis("[]").points(), Err(AxisError::Empty));
        assert!(matches!(axis("{ logspace = [-1, 1, 2.5] }").points(), Err(AxisError::BadCount { .. })));
        assert!(matches!(axis("{ linspace = [0, 1, 0] }").points(), Err(AxisError::BadCount { .. })));
        assert!(matches!(axis("{ logspace = [0, 400, 2] }").points(), Err(AxisError::NotFinite(_))));
    }
}
