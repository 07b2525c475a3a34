//! Aggregation operators (`sum`, `avg`, `min`, `max`, `count`, `group`,
//! `stddev`, `stdvar`, `topk`, `bottomk`, `quantile`, `count_values`) with
//! `by` and `without`.
//!
//! Groups are worked out once per input series, not per step; each step then
//! only folds values. Arithmetic follows Prometheus 2.42 (incremental mean
//! for `avg`, Welford for `stddev`/`stdvar`, NaN handling of `min`/`max`).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use herd_common::metric::Labels;
use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV, T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::eval::{Evaluated, Evaluator, Series, SeriesBuilder, StepCursor};
use super::{QueryError, format_value, labels};

pub(crate) fn eval(ev: &Evaluator<'_>, aggregate: &AggregateExpr) -> Result<Evaluated, QueryError> {
    let op = aggregate.op.id();
    let param = match &aggregate.param {
        Some(param) => Some(ev.eval(param)?),
        None => None,
    };
    let input = ev.eval(&aggregate.expr)?.into_vector()?;
    let grouping = match &aggregate.modifier {
        None => Grouping { by: true, names: Vec::new() },
        Some(LabelModifier::Include(names)) => Grouping { by: true, names: labels::sorted_names(&names.labels) },
        Some(LabelModifier::Exclude(names)) => Grouping { by: false, names: labels::sorted_names(&names.labels) },
    };
    let series = match (op, param) {
        (T_TOPK | T_BOTTOMK | T_QUANTILE, Some(param)) => {
            let param = param.into_scalar()?;
            ranked(ev, op, &input, &grouping, &param)?
        }
        (T_COUNT_VALUES, Some(param)) => count_values(ev, &input, &grouping, &param.into_string()?)?,
        (T_SUM | T_AVG | T_COUNT | T_GROUP | T_MIN | T_MAX | T_STDDEV | T_STDVAR, None) => {
            folded(ev, op, &input, &grouping)?
        }
        _ => return Err(QueryError::Unsupported(format!("aggregation {}", aggregate.op))),
    };
    Ok(Evaluated::Vector(series))
}

struct Grouping {
    /// `by` (true) or `without` (false).
    by: bool,
    /// Sorted, deduplicated label names.
    names: Vec<String>,
}

impl Grouping {
    fn key(&self, labels: &Labels, out: &mut Vec<u8>) {
        if self.by {
            labels::key_on(labels, &self.names, out)
        } else {
            labels::key_without(labels, &self.names, true, out)
        }
    }

    fn output_labels(&self, labels: &Labels) -> Labels {
        if self.by { labels::keep(labels, &self.names) } else { labels::remove(labels, &self.names, true) }
    }

    /// The group of each input series and each group's output labels.
    fn assign(&self, input: &[Series]) -> (Vec<usize>, Vec<Arc<Labels>>) {
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut group_labels = Vec::new();
        let mut key = Vec::new();
        let group_of = input
            .iter()
            .map(|s| {
                self.key(&s.labels, &mut key);
                if let Some(&group) = index.get(&key) {
                    return group;
                }
                index.insert(key.clone(), group_labels.len());
                group_labels.push(Arc::new(self.output_labels(&s.labels)));
                group_labels.len() - 1
            })
            .collect();
        (group_of, group_labels)
    }
}

/// Running state of one group at one step.
#[derive(Clone, Copy, Default)]
struct Fold {
    /// 1 + the step this state belongs to; 0 for never used.
    step: usize,
    value: f64,
    mean: f64,
    count: f64,
}

impl Fold {
    fn first(op: u16, value: f64, step: usize) -> Self {
        let initial = match op {
            T_STDDEV | T_STDVAR => 0.0,
            T_GROUP => 1.0,
            _ => value,
        };
        Fold { step, value: initial, mean: value, count: 1.0 }
    }

    fn add(&mut self, op: u16, value: f64) {
        match op {
            T_SUM => self.value += value,
            T_AVG => {
                self.count += 1.0;
                if self.mean.is_infinite() {
                    // Inf - Inf would turn a correct infinite mean into NaN.
                    if value.is_infinite() && (self.mean > 0.0) == (value > 0.0) {
                        return;
                    }
                    if value.is_finite() {
                        return;
                    }
                }
                // Divide before subtracting so large values cannot overflow.
                self.mean += value / self.count - self.mean / self.count;
            }
            T_MAX if self.value < value || self.value.is_nan() => self.value = value,
            T_MIN if self.value > value || self.value.is_nan() => self.value = value,
            T_COUNT => self.count += 1.0,
            T_STDDEV | T_STDVAR => {
                self.count += 1.0;
                let delta = value - self.mean;
                self.mean += delta / self.count;
                self.value += delta * (value - self.mean);
            }
            _ => {} // group: the value stays 1
        }
    }

    fn result(&self, op: u16) -> f64 {
        match op {
            T_AVG => self.mean,
            T_COUNT => self.count,
            T_STDVAR => self.value / self.count,
            T_STDDEV => (self.value / self.count).sqrt(),
            _ => self.value,
        }
    }
}

fn folded(ev: &Evaluator<'_>, op: u16, input: &[Series], grouping: &Grouping) -> Result<Vec<Series>, QueryError> {
    let (group_of, group_labels) = grouping.assign(input);
    let mut folds = vec![Fold::default(); group_labels.len()];
    let mut slots: Vec<Option<usize>> = vec![None; group_labels.len()];
    let mut builder = SeriesBuilder::new(ev.budget());
    let mut cursor = StepCursor::new(input.len());
    let (mut present, mut touched) = (Vec::new(), Vec::new());
    for step in 0..ev.steps() {
        ev.budget().check_deadline()?;
        let ts = ev.step_time(step);
        cursor.gather(input, ts, &mut present);
        touched.clear();
        for &(i, value) in &present {
            let group = group_of[i];
            let fold = &mut folds[group];
            if fold.step != step + 1 {
                *fold = Fold::first(op, value, step + 1);
                touched.push(group);
            } else {
                fold.add(op, value);
            }
        }
        for &group in &touched {
            let slot = *slots[group].get_or_insert_with(|| builder.slot(Arc::clone(&group_labels[group])));
            builder.push(slot, ts, folds[group].result(op))?;
        }
    }
    Ok(builder.finish())
}

/// `topk`, `bottomk` and `quantile`: they need every member of a group.
fn ranked(
    ev: &Evaluator<'_>,
    op: u16,
    input: &[Series],
    grouping: &Grouping,
    param: &[f64],
) -> Result<Vec<Series>, QueryError> {
    let (group_of, group_labels) = grouping.assign(input);
    let mut members: Vec<Vec<(f64, usize)>> = vec![Vec::new(); group_labels.len()];
    let mut member_step = vec![0usize; group_labels.len()];
    // quantile emits one series per group, topk/bottomk the input series.
    let mut group_slots: Vec<Option<usize>> = vec![None; group_labels.len()];
    let mut series_slots: Vec<Option<usize>> = vec![None; input.len()];
    let mut builder = SeriesBuilder::new(ev.budget());
    let mut cursor = StepCursor::new(input.len());
    let (mut present, mut touched, mut chosen) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..ev.steps() {
        ev.budget().check_deadline()?;
        let ts = ev.step_time(step);
        let param = param.get(step).copied().unwrap_or(f64::NAN);
        cursor.gather(input, ts, &mut present);
        let k = if op == T_QUANTILE {
            0
        } else {
            // Prometheus refuses what does not fit an int64, NaN included.
            if !(param <= i64::MAX as f64 && param >= i64::MIN as f64) {
                return Err(QueryError::Execution(format!("Scalar value {param} overflows int64")));
            }
            let k = param as i64;
            if k < 1 {
                continue;
            }
            usize::try_from(k).unwrap_or(usize::MAX)
        };
        touched.clear();
        for &(i, value) in &present {
            let group = group_of[i];
            if member_step[group] != step + 1 {
                member_step[group] = step + 1;
                members[group].clear();
                touched.push(group);
            }
            members[group].push((value, i));
        }
        for &group in &touched {
            let group_members = &mut members[group];
            match op {
                T_QUANTILE => {
                    let slot =
                        *group_slots[group].get_or_insert_with(|| builder.slot(Arc::clone(&group_labels[group])));
                    let mut values: Vec<f64> = group_members.iter().map(|(v, _)| *v).collect();
                    builder.push(slot, ts, quantile(param, &mut values))?;
                }
                _ => {
                    select_k(group_members, k, op == T_TOPK, &mut chosen);
                    for &(value, i) in &chosen {
                        let slot = *series_slots[i].get_or_insert_with(|| builder.slot(Arc::clone(&input[i].labels)));
                        builder.push(slot, ts, value)?;
                    }
                }
            }
        }
    }
    Ok(builder.finish())
}

/// The `k` largest (`top`) or smallest members, largest (smallest) first,
/// chosen exactly as Prometheus chooses them, so that ties at the boundary
/// keep the same series: a binary min-heap (max-heap for bottomk) of the
/// first `k` members in input order, where a later member replaces the root
/// only when strictly better; then the heap reversed by an insertion sort
/// (Go's sort for up to 12 elements; a stable sort in the same order beyond).
fn select_k(members: &[(f64, usize)], k: usize, top: bool, out: &mut Vec<(f64, usize)>) {
    // The heap's order: NaN below everything, then by value.
    let less = |a: f64, b: f64| a.is_nan() || if top { a < b } else { a > b };
    let up = |heap: &mut [(f64, usize)], mut j: usize| {
        while j > 0 {
            let parent = (j - 1) / 2;
            if !less(heap[j].0, heap[parent].0) {
                break;
            }
            heap.swap(parent, j);
            j = parent;
        }
    };
    let down = |heap: &mut [(f64, usize)], mut i: usize| {
        loop {
            let left = 2 * i + 1;
            if left >= heap.len() {
                break;
            }
            let mut child = left;
            if left + 1 < heap.len() && less(heap[left + 1].0, heap[left].0) {
                child = left + 1;
            }
            if !less(heap[child].0, heap[i].0) {
                break;
            }
            heap.swap(i, child);
            i = child;
        }
    };
    out.clear();
    for &member in members {
        if out.len() < k {
            out.push(member);
            let last = out.len() - 1;
            up(out, last);
            continue;
        }
        let root = out[0].0;
        let better = if top { root < member.0 } else { root > member.0 };
        if better || (root.is_nan() && !member.0.is_nan()) {
            out[0] = member;
            if k > 1 {
                down(out, 0);
            }
        }
    }
    if out.len() <= 12 {
        for i in 1..out.len() {
            let mut j = i;
            while j > 0 && less(out[j - 1].0, out[j].0) {
                out.swap(j, j - 1);
                j -= 1;
            }
        }
    } else if top {
        out.sort_by(|a, b| nan_last(a.0, b.0, |x, y| y.total_cmp(&x)));
    } else {
        out.sort_by(|a, b| nan_last(a.0, b.0, |x, y| x.total_cmp(&y)));
    }
}

fn nan_last(a: f64, b: f64, order: impl Fn(f64, f64) -> Ordering) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => order(a, b),
    }
}

/// The φ-quantile of `values` by linear interpolation between closest ranks,
/// as Prometheus's `quantile` (sorts `values`).
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN sorts first, as in Prometheus.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn count_values(
    ev: &Evaluator<'_>,
    input: &[Series],
    grouping: &Grouping,
    label: &str,
) -> Result<Vec<Series>, QueryError> {
    if !labels::is_valid_name(label) {
        return Err(QueryError::Execution(format!("invalid label name {label:?}")));
    }
    // With `by`, the value label joins the grouping labels.
    let names = if grouping.by {
        labels::sorted_names(&[grouping.names.clone(), vec![label.to_owned()]].concat())
    } else {
        grouping.names.clone()
    };
    let grouping = Grouping { by: grouping.by, names };
    // (series, value bits) → output slot: values repeat, label edits are costly.
    let mut slot_of: HashMap<(usize, u64), usize> = HashMap::new();
    let mut counts: HashMap<usize, (usize, f64)> = HashMap::new();
    let mut builder = SeriesBuilder::new(ev.budget());
    let mut cursor = StepCursor::new(input.len());
    let (mut present, mut order) = (Vec::new(), Vec::new());
    for step in 0..ev.steps() {
        ev.budget().check_deadline()?;
        let ts = ev.step_time(step);
        cursor.gather(input, ts, &mut present);
        order.clear();
        for &(i, value) in &present {
            let slot = *slot_of.entry((i, value.to_bits())).or_insert_with(|| {
                let with_value = labels::set(&input[i].labels, label, &format_value(value));
                builder.slot(Arc::new(grouping.output_labels(&with_value)))
            });
            let count = counts.entry(slot).or_insert((0, 0.0));
            if count.0 != step + 1 {
                *count = (step + 1, 0.0);
                order.push(slot);
            }
            count.1 += 1.0;
        }
        for &slot in &order {
            builder.push(slot, ts, counts[&slot].1)?;
        }
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_between_ranks() {
        for (q, values, expected) in [
            (0.5, vec![1.0, 3.0, 2.0], 2.0),
            (0.8, vec![0.0, 1.0], 0.8),
            (0.8, vec![0.0, 1.0, 4.0], 2.8),
            (0.0, vec![5.0], 5.0),
            (1.5, vec![5.0], f64::INFINITY),
            (-1.0, vec![5.0], f64::NEG_INFINITY),
        ] {
            let mut values = values;
            let got = quantile(q, &mut values);
            assert!(got == expected || (got - expected).abs() < 1e-12, "q={q}: {got}");
        }
        assert!(quantile(f64::NAN, &mut [1.0]).is_nan());
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn folds_follow_prometheus_arithmetic() {
        let fold = |op, values: &[f64]| {
            let mut f = Fold::first(op, values[0], 1);
            for &v in &values[1..] {
                f.add(op, v);
            }
            f.result(op)
        };
        assert_eq!(fold(T_AVG, &[f64::INFINITY, 0.0, f64::INFINITY]), f64::INFINITY);
        assert!(fold(T_AVG, &[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(fold(T_AVG, &[1e307; 4]), 1e307);
        assert_eq!(fold(T_MAX, &[f64::NAN, 1.0]), 1.0);
        assert_eq!(fold(T_MIN, &[2.0, f64::NAN, 1.0]), 1.0);
        assert_eq!(fold(T_STDVAR, &[1.0, 3.0]), 1.0);
        assert_eq!(fold(T_GROUP, &[7.0, 8.0]), 1.0);
    }
}
