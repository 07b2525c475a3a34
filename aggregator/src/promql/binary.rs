//! Binary operators: arithmetic, comparison (filtering or `bool`), `atan2`
//! and the set operators `and`, `or`, `unless`, between scalars and
//! vectors, with `on`/`ignoring` and `group_left`/`group_right` matching.
//!
//! Each series' match signature is computed once and interned to a small
//! number, so the per-step work is array lookups, not hashing label sets.

use std::collections::HashMap;
use std::sync::Arc;

use herd_common::metric::Labels;
use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD, T_MUL, T_NEQ, T_POW,
    T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::QueryError;
use super::eval::{Evaluated, Evaluator, Series, SeriesBuilder, StepCursor, merge_same_labels};
use super::labels;
use crate::store::Sample;

pub(crate) fn eval(ev: &Evaluator<'_>, binary: &BinaryExpr) -> Result<Evaluated, QueryError> {
    let op = binary.op.id();
    let modifier = binary.modifier.as_ref();
    if modifier.is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some()) {
        return Err(QueryError::Unsupported("fill modifiers on binary operators".into()));
    }
    let return_bool = modifier.is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&binary.lhs)?;
    let rhs = ev.eval(&binary.rhs)?;
    match (lhs, rhs) {
        (Evaluated::Scalar(lhs), Evaluated::Scalar(rhs)) => {
            Ok(Evaluated::Scalar(lhs.iter().zip(&rhs).map(|(&l, &r)| scalar_op(op, l, r)).collect()))
        }
        (Evaluated::Vector(vector), Evaluated::Scalar(scalar)) => {
            vector_scalar(ev, op, vector, &scalar, false, return_bool).map(Evaluated::Vector)
        }
        (Evaluated::Scalar(scalar), Evaluated::Vector(vector)) => {
            vector_scalar(ev, op, vector, &scalar, true, return_bool).map(Evaluated::Vector)
        }
        (Evaluated::Vector(lhs), Evaluated::Vector(rhs)) => {
            let matching = Matching::from_modifier(binary);
            let series = if matches!(op, T_LAND | T_LOR | T_LUNLESS) {
                set_operation(ev, op, &lhs, &rhs, &matching)?
            } else {
                vector_vector(ev, op, &lhs, &rhs, &matching, return_bool)?
            };
            Ok(Evaluated::Vector(series))
        }
        (lhs, rhs) => Err(QueryError::Execution(format!(
            "internal error: binary operator on {} and {}",
            lhs.sample_count(),
            rhs.sample_count()
        ))),
    }
}

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic drops the metric name; comparisons and `atan2` keep it (2.42).
fn drops_name(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD)
}

fn scalar_op(op: u16, l: f64, r: f64) -> f64 {
    let (value, keep) = element_op(op, l, r);
    if is_comparison(op) { f64::from(u8::from(keep)) } else { value }
}

/// The value of `l op r` and, for comparisons, whether the element is kept
/// (the value of a comparison is its left operand).
fn element_op(op: u16, l: f64, r: f64) -> (f64, bool) {
    match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_POW => (l.powf(r), true),
        // Rust's `%` on floats is fmod, like Go's math.Mod.
        T_MOD => (l % r, true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

fn vector_scalar(
    ev: &Evaluator<'_>,
    op: u16,
    vector: Vec<Series>,
    scalar: &[f64],
    scalar_on_left: bool,
    return_bool: bool,
) -> Result<Vec<Series>, QueryError> {
    let drop_name = drops_name(op) || return_bool;
    let mut out = Vec::with_capacity(vector.len());
    for series in vector {
        let labels = if drop_name { Arc::new(labels::without_name(&series.labels)) } else { series.labels };
        let mut points = Vec::with_capacity(series.points.len());
        for point in series.points {
            let s = scalar.get(ev.step_of(point.timestamp_ms)).copied().unwrap_or(f64::NAN);
            let (l, r) = if scalar_on_left { (s, point.value) } else { (point.value, s) };
            let (mut value, mut keep) = element_op(op, l, r);
            if is_comparison(op) {
                // A comparison yields the vector's element, whichever side it is on.
                value = point.value;
            }
            if return_bool {
                value = f64::from(u8::from(keep));
                keep = true;
            }
            if keep {
                points.push(Sample { timestamp_ms: point.timestamp_ms, value });
            }
        }
        if !points.is_empty() {
            out.push(Series { labels, points });
        }
    }
    merge_same_labels(out)
}

/// How two vectors' elements are matched.
struct Matching {
    card: Card,
    /// `on` (true) or `ignoring` (false, also when neither is written).
    on: bool,
    names: Vec<String>,
    /// `group_left`/`group_right` labels copied from the "one" side.
    include: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
}

impl Matching {
    fn from_modifier(binary: &BinaryExpr) -> Self {
        let modifier = binary.modifier.as_ref();
        let (on, names) = match modifier.and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(names)) => (true, labels::sorted_names(&names.labels)),
            Some(LabelModifier::Exclude(names)) => (false, labels::sorted_names(&names.labels)),
            None => (false, Vec::new()),
        };
        let (card, include) = match modifier.map(|m| &m.card) {
            Some(VectorMatchCardinality::ManyToOne(l)) => (Card::ManyToOne, l.labels.clone()),
            Some(VectorMatchCardinality::OneToMany(l)) => (Card::OneToMany, l.labels.clone()),
            _ => (Card::OneToOne, Vec::new()),
        };
        Matching { card, on, names, include }
    }

    /// Interned match signature of each series.
    fn signatures(&self, series: &[Series], interner: &mut HashMap<Vec<u8>, usize>) -> Vec<usize> {
        let mut key = Vec::new();
        series
            .iter()
            .map(|s| {
                if self.on {
                    labels::key_on(&s.labels, &self.names, &mut key)
                } else {
                    labels::key_without(&s.labels, &self.names, true, &mut key)
                }
                let next = interner.len();
                *interner.entry(key.clone()).or_insert(next)
            })
            .collect()
    }

    /// The labels a series is matched on, for error messages.
    fn matched_labels(&self, labels: &Labels) -> Labels {
        if self.on { labels::keep(labels, &self.names) } else { labels::remove(labels, &self.names, true) }
    }

    /// Labels of the result of matching `many` with `one`.
    fn result_labels(&self, op: u16, many: &Labels, one: &Labels, return_bool: bool) -> Labels {
        let mut result = if drops_name(op) || return_bool { labels::without_name(many) } else { many.clone() };
        if self.card == Card::OneToOne {
            result =
                if self.on { labels::keep(&result, &self.names) } else { labels::remove(&result, &self.names, false) };
        }
        for name in &self.include {
            result = labels::set(&result, name, one.get(name).unwrap_or(""));
        }
        result
    }
}

fn vector_vector(
    ev: &Evaluator<'_>,
    op: u16,
    lhs: &[Series],
    rhs: &[Series],
    matching: &Matching,
    return_bool: bool,
) -> Result<Vec<Series>, QueryError> {
    let mut interner = HashMap::new();
    let lhs_sigs = matching.signatures(lhs, &mut interner);
    let rhs_sigs = matching.signatures(rhs, &mut interner);
    // group_right is group_left with the sides swapped; values are swapped back.
    let swapped = matching.card == Card::OneToMany;
    let (many, one, many_sigs, one_sigs) =
        if swapped { (rhs, lhs, &rhs_sigs, &lhs_sigs) } else { (lhs, rhs, &lhs_sigs, &rhs_sigs) };
    let signature_count = interner.len();
    // Per signature: (1 + step it was set at, series on the one side, value).
    let mut one_at: Vec<(usize, usize, f64)> = vec![(0, 0, 0.0); signature_count];
    let mut matched_at = vec![0usize; signature_count];
    let mut pair_slots: HashMap<(usize, usize), usize> = HashMap::new();
    // A series almost always matches the same partner at every step: remember it.
    let mut last_pair: Vec<Option<(usize, usize)>> = vec![None; many.len()];
    let mut slot_signature: Vec<usize> = Vec::new();
    let mut builder = SeriesBuilder::new(ev.budget());
    let (mut many_cursor, mut one_cursor) = (StepCursor::new(many.len()), StepCursor::new(one.len()));
    let (mut many_present, mut one_present) = (Vec::new(), Vec::new());
    for step in 0..ev.steps() {
        ev.budget().check_deadline()?;
        let ts = ev.step_time(step);
        let stamp = step + 1;
        many_cursor.gather(many, ts, &mut many_present);
        one_cursor.gather(one, ts, &mut one_present);
        if many_present.is_empty() || one_present.is_empty() {
            continue;
        }
        for &(j, value) in &one_present {
            let sig = one_sigs[j];
            if one_at[sig].0 == stamp {
                let side = if swapped { "left" } else { "right" };
                let previous = &one[one_at[sig].1].labels;
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    matching.matched_labels(&one[j].labels),
                    one[j].labels,
                    previous
                )));
            }
            one_at[sig] = (stamp, j, value);
        }
        for &(i, value) in &many_present {
            let sig = many_sigs[i];
            let (at, j, one_value) = one_at[sig];
            if at != stamp {
                continue;
            }
            let (l, r) = if swapped { (one_value, value) } else { (value, one_value) };
            let (mut result, keep) = element_op(op, l, r);
            if return_bool {
                result = f64::from(u8::from(keep));
            } else if !keep {
                continue;
            }
            let slot = match last_pair[i] {
                Some((partner, slot)) if partner == j => slot,
                _ => {
                    let slot = *pair_slots.entry((i, j)).or_insert_with(|| {
                        builder.slot(Arc::new(matching.result_labels(op, &many[i].labels, &one[j].labels, return_bool)))
                    });
                    last_pair[i] = Some((j, slot));
                    slot
                }
            };
            if slot_signature.len() <= slot {
                slot_signature.resize(slot + 1, usize::MAX);
            }
            if matching.card == Card::OneToOne {
                if matched_at[sig] == stamp {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                            .into(),
                    ));
                }
                matched_at[sig] = stamp;
            } else if builder.has_point_at(slot, ts) && slot_signature[slot] == sig {
                return Err(QueryError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches".into(),
                ));
            }
            slot_signature[slot] = sig;
            builder.push(slot, ts, result)?;
        }
    }
    Ok(builder.finish())
}

fn set_operation(
    ev: &Evaluator<'_>,
    op: u16,
    lhs: &[Series],
    rhs: &[Series],
    matching: &Matching,
) -> Result<Vec<Series>, QueryError> {
    let mut interner = HashMap::new();
    let lhs_sigs = matching.signatures(lhs, &mut interner);
    let rhs_sigs = matching.signatures(rhs, &mut interner);
    let mut seen_at = vec![0usize; interner.len()];
    let mut lhs_slots: Vec<Option<usize>> = vec![None; lhs.len()];
    let mut rhs_slots: Vec<Option<usize>> = vec![None; rhs.len()];
    let mut builder = SeriesBuilder::new(ev.budget());
    let (mut lhs_cursor, mut rhs_cursor) = (StepCursor::new(lhs.len()), StepCursor::new(rhs.len()));
    let (mut lhs_present, mut rhs_present) = (Vec::new(), Vec::new());
    for step in 0..ev.steps() {
        ev.budget().check_deadline()?;
        let ts = ev.step_time(step);
        let stamp = step + 1;
        lhs_cursor.gather(lhs, ts, &mut lhs_present);
        rhs_cursor.gather(rhs, ts, &mut rhs_present);
        let mut emit_lhs = |builder: &mut SeriesBuilder<'_>, i: usize, value: f64| {
            let slot = *lhs_slots[i].get_or_insert_with(|| builder.slot(Arc::clone(&lhs[i].labels)));
            builder.push(slot, ts, value)
        };
        match op {
            T_LAND => {
                for &(j, _) in &rhs_present {
                    seen_at[rhs_sigs[j]] = stamp;
                }
                for &(i, value) in &lhs_present {
                    if seen_at[lhs_sigs[i]] == stamp {
                        emit_lhs(&mut builder, i, value)?;
                    }
                }
            }
            T_LOR => {
                for &(i, value) in &lhs_present {
                    seen_at[lhs_sigs[i]] = stamp;
                    emit_lhs(&mut builder, i, value)?;
                }
                for &(j, value) in &rhs_present {
                    if seen_at[rhs_sigs[j]] != stamp {
                        let slot = *rhs_slots[j].get_or_insert_with(|| builder.slot(Arc::clone(&rhs[j].labels)));
                        builder.push(slot, ts, value)?;
                    }
                }
            }
            _ => {
                for &(j, _) in &rhs_present {
                    seen_at[rhs_sigs[j]] = stamp;
                }
                for &(i, value) in &lhs_present {
                    if seen_at[lhs_sigs[i]] != stamp {
                        emit_lhs(&mut builder, i, value)?;
                    }
                }
            }
        }
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_operations() {
        for (op, l, r, value, keep) in [
            (T_ADD, 1.0, 2.0, 3.0, true),
            (T_MOD, -7.0, 3.0, -1.0, true),
            (T_POW, 2.0, -1.0, 0.5, true),
            (T_GTR, 3.0, 2.0, 3.0, true),
            (T_LSS, 3.0, 2.0, 3.0, false),
            (T_EQLC, 2.0, 2.0, 2.0, true),
        ] {
            assert_eq!(element_op(op, l, r), (value, keep));
        }
        assert!(element_op(T_MOD, 1.0, 0.0).0.is_nan());
        assert_eq!(scalar_op(T_EQLC, 1.0, 1.0), 1.0);
        assert_eq!(scalar_op(T_NEQ, 1.0, 1.0), 0.0);
    }
}
