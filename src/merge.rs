//! Conflict strategies: how a record's materialized state absorbs an
//! operation. Pure functions, no I/O.
//!
//! - [`ConflictStrategy::LastWriteWins`]: the version with the greatest
//!   [`Stamp`] wins, whole. Commutative, associative and idempotent, so
//!   replicas that applied the same operations in any order agree.
//! - [`ConflictStrategy::MergeFields`]: last-write-wins per top-level field.
//!   The state keeps a stamp per field (also for removed fields), the stamp
//!   of the newest write (`e`) and of the newest delete (`d`); the record is
//!   visible when `e > d`, with the fields written after `d`. This is a
//!   join-semilattice too, and it is normalized (fields older than `d` are
//!   dropped) so that converged replicas hold byte-identical state.
//! - [`ConflictStrategy::Custom`]: a closure decides when a received version
//!   was not written on top of the current one (writes under this strategy
//!   record the version they replaced). It is called with the two versions
//!   in stamp order, whatever the arrival order, so a deterministic resolver
//!   gives every replica the same answer for the same pair.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::change::{Op, Stamp};

/// Signature of a custom conflict resolver: returns the value to keep
/// (`None` deletes the record).
pub type Resolver = dyn Fn(&Conflict<'_>) -> Option<Value> + Send + Sync;

/// How concurrent writes to one record are reconciled.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ConflictStrategy {
    /// The newest write (by hybrid logical clock, then author) wins. Default.
    #[default]
    LastWriteWins,
    /// Last-write-wins per top-level field of an object document.
    MergeFields,
    /// A custom resolver.
    Custom(Arc<Resolver>),
}

impl ConflictStrategy {
    /// A custom strategy from a closure.
    pub fn custom(
        resolver: impl Fn(&Conflict<'_>) -> Option<Value> + Send + Sync + 'static,
    ) -> Self {
        ConflictStrategy::Custom(Arc::new(resolver))
    }

    /// Whether a write is merged with the stored version of its record
    /// (every strategy but last-write-wins reads it first).
    pub fn reads_stored(&self) -> bool {
        !matches!(self, ConflictStrategy::LastWriteWins)
    }

    /// The strategy's name as the JavaScript API spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ConflictStrategy::LastWriteWins => "last-write-wins",
            ConflictStrategy::MergeFields => "merge-fields",
            ConflictStrategy::Custom(_) => "custom",
        }
    }

    /// Parses `"last-write-wins"` or `"merge-fields"`.
    pub fn from_name(name: &str) -> Option<ConflictStrategy> {
        match name {
            "last-write-wins" | "lww" => Some(ConflictStrategy::LastWriteWins),
            "merge-fields" => Some(ConflictStrategy::MergeFields),
            _ => None,
        }
    }
}

impl std::fmt::Debug for ConflictStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One side of a [`Conflict`].
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    /// The document, or `None` for a deletion.
    pub value: Option<&'a Value>,
    /// Its stamp.
    pub stamp: Stamp,
}

/// Two versions of a record, neither written on top of the other.
#[derive(Debug, Clone, Copy)]
pub struct Conflict<'a> {
    /// Collection name.
    pub collection: &'a str,
    /// Record id.
    pub id: &'a str,
    /// The version with the smaller stamp.
    pub earlier: Version<'a>,
    /// The version with the greater stamp.
    pub later: Version<'a>,
}

/// Materialized state of one record, as storage keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    /// Collection name.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// JSON text of the visible document; `None` is a tombstone.
    pub value: Option<String>,
    /// Stamp of the newest operation applied.
    pub stamp: Stamp,
    /// Per-field state (JSON text) for merge-fields collections.
    pub fields: Option<String>,
}

/// Materialized state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRow {
    /// The key.
    pub key: String,
    /// JSON text of the value; `None` is a tombstone.
    pub value: Option<String>,
    /// Stamp of the write.
    pub stamp: Stamp,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FieldState {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    d: Option<Stamp>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    e: Option<Stamp>,
    f: BTreeMap<String, FieldVersion>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FieldVersion {
    s: Stamp,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    v: Option<Value>,
}

/// Why an operation could not be applied to stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeError(pub String);

fn parse(text: &str) -> Result<Value, MergeError> {
    serde_json::from_str(text).map_err(|e| MergeError(format!("stored JSON does not parse: {e}")))
}

fn encode(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are always strings.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Applies a record operation stamped `stamp` to `current`. Returns the new
/// state, or `None` when the operation changes nothing (older or duplicate).
pub fn apply_record_op(
    strategy: &ConflictStrategy,
    current: Option<&RecordRow>,
    op: &Op,
    stamp: Stamp,
) -> Result<Option<RecordRow>, MergeError> {
    let (collection, id) = match op {
        Op::RecordPut { collection, id, .. }
        | Op::RecordPatch { collection, id, .. }
        | Op::RecordDelete { collection, id, .. } => (collection, id),
        _ => return Err(MergeError("not a record operation".into())),
    };
    if current.is_some_and(|c| c.stamp == stamp) {
        return Ok(None);
    }
    let row = |value: Option<String>, stamp: Stamp, fields: Option<String>| RecordRow {
        collection: collection.clone(),
        id: id.clone(),
        value,
        stamp,
        fields,
    };
    match strategy {
        ConflictStrategy::MergeFields => merge_fields(current, op, stamp)
            .map(|(value, stamp, fields)| Some(row(value, stamp, Some(fields)))),
        ConflictStrategy::LastWriteWins => {
            if current.is_some_and(|c| c.stamp > stamp) {
                return Ok(None);
            }
            Ok(Some(row(whole_value(current, op)?, stamp, None)))
        }
        ConflictStrategy::Custom(resolver) => {
            let base = match op {
                Op::RecordPut { base, .. } | Op::RecordDelete { base, .. } => *base,
                _ => None,
            };
            let incoming = whole_value(current, op)?;
            let Some(current) = current else {
                return Ok(Some(row(incoming, stamp, None)));
            };
            if base == Some(current.stamp) && stamp > current.stamp {
                return Ok(Some(row(incoming, stamp, None)));
            }
            let current_value = current.value.as_deref().map(parse).transpose()?;
            let incoming_value = incoming.as_deref().map(parse).transpose()?;
            let mine = Version {
                value: current_value.as_ref(),
                stamp: current.stamp,
            };
            let theirs = Version {
                value: incoming_value.as_ref(),
                stamp,
            };
            let (earlier, later) = if mine.stamp < theirs.stamp {
                (mine, theirs)
            } else {
                (theirs, mine)
            };
            let resolved = resolver(&Conflict {
                collection,
                id,
                earlier,
                later,
            });
            Ok(Some(row(resolved.as_ref().map(encode), later.stamp, None)))
        }
    }
}

/// The whole-document result of `op` over `current` (patches apply to the
/// current document).
fn whole_value(current: Option<&RecordRow>, op: &Op) -> Result<Option<String>, MergeError> {
    Ok(match op {
        Op::RecordPut { value, .. } => Some(value.clone()),
        Op::RecordDelete { .. } => None,
        Op::RecordPatch { set, unset, .. } => {
            let mut doc = match current
                .and_then(|c| c.value.as_deref())
                .map(parse)
                .transpose()?
            {
                Some(Value::Object(map)) => map,
                _ => Map::new(),
            };
            for field in unset {
                doc.remove(field);
            }
            for (field, text) in set {
                doc.insert(field.clone(), parse(text)?);
            }
            Some(encode(&Value::Object(doc)))
        }
        _ => return Err(MergeError("not a record operation".into())),
    })
}

fn merge_fields(
    current: Option<&RecordRow>,
    op: &Op,
    stamp: Stamp,
) -> Result<(Option<String>, Stamp, String), MergeError> {
    let mut state = match current {
        None => FieldState::default(),
        Some(RecordRow {
            fields: Some(text), ..
        }) => serde_json::from_str(text)
            .map_err(|e| MergeError(format!("stored field state does not parse: {e}")))?,
        // A row written under another strategy: every field carries its stamp.
        Some(row) => {
            let mut state = FieldState::default();
            match row.value.as_deref().map(parse).transpose()? {
                Some(Value::Object(map)) => {
                    state.e = Some(row.stamp);
                    for (k, v) in map {
                        state.f.insert(
                            k,
                            FieldVersion {
                                s: row.stamp,
                                v: Some(v),
                            },
                        );
                    }
                }
                Some(_) => state.e = Some(row.stamp),
                None => state.d = Some(row.stamp),
            }
            state
        }
    };
    let set_field = |state: &mut FieldState, field: &str, value: Option<Value>| {
        let newer = state.f.get(field).is_none_or(|old| stamp > old.s);
        if newer {
            state
                .f
                .insert(field.to_owned(), FieldVersion { s: stamp, v: value });
        }
    };
    match op {
        Op::RecordPatch { set, unset, .. } => {
            for field in unset {
                set_field(&mut state, field, None);
            }
            for (field, text) in set {
                set_field(&mut state, field, Some(parse(text)?));
            }
            state.e = state.e.max(Some(stamp));
        }
        Op::RecordPut { value, .. } => {
            let doc = match parse(value)? {
                Value::Object(map) => map,
                other => Map::from_iter([("value".to_owned(), other)]),
            };
            let absent: Vec<String> = state
                .f
                .keys()
                .filter(|k| !doc.contains_key(*k))
                .cloned()
                .collect();
            for field in absent {
                set_field(&mut state, &field, None);
            }
            for (field, value) in doc {
                set_field(&mut state, &field, Some(value));
            }
            state.e = state.e.max(Some(stamp));
        }
        Op::RecordDelete { .. } => state.d = state.d.max(Some(stamp)),
        _ => return Err(MergeError("not a record operation".into())),
    }
    // Normalize: fields older than the newest delete can never be visible again.
    if let Some(d) = state.d {
        state.f.retain(|_, fv| fv.s > d);
    }
    let visible = match (state.e, state.d) {
        (Some(e), d) if d.is_none_or(|d| e > d) => {
            let doc: Map<String, Value> = state
                .f
                .iter()
                .filter_map(|(k, fv)| fv.v.clone().map(|v| (k.clone(), v)))
                .collect();
            Some(encode(&Value::Object(doc)))
        }
        _ => None,
    };
    let newest = state.e.max(state.d).unwrap_or(stamp);
    let fields = serde_json::to_string(&state).map_err(|e| MergeError(e.to_string()))?;
    Ok((visible, newest, fields))
}

/// Applies a key write stamped `stamp` (always last-write-wins).
pub fn apply_kv_op(current: Option<&KvRow>, op: &Op, stamp: Stamp) -> Option<KvRow> {
    if current.is_some_and(|c| c.stamp >= stamp) {
        return None;
    }
    match op {
        Op::KvSet { key, value } => Some(KvRow {
            key: key.clone(),
            value: Some(value.clone()),
            stamp,
        }),
        Op::KvDelete { key } => Some(KvRow {
            key: key.clone(),
            value: None,
            stamp,
        }),
        _ => None,
    }
}

/// The fields a merge-fields `put` of `new` over `old` must set and remove.
pub fn field_diff(
    old: Option<&Value>,
    new: &Map<String, Value>,
) -> (Vec<(String, String)>, Vec<String>) {
    let old = match old {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    };
    let set = new
        .iter()
        .filter(|(k, v)| old.is_none_or(|o| o.get(*k) != Some(*v)))
        .map(|(k, v)| (k.clone(), encode(v)))
        .collect();
    let unset = old
        .map(|o| {
            o.keys()
                .filter(|k| !new.contains_key(*k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    (set, unset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::identity::DeviceId;

    fn stamp(ms: u64, author: u8) -> Stamp {
        Stamp {
            hlc: Hlc::from_millis(ms),
            author: DeviceId::from_bytes([author; 32]),
        }
    }

    fn put(value: &str) -> Op {
        Op::RecordPut {
            collection: "c".into(),
            id: "r".into(),
            value: value.into(),
            base: None,
        }
    }

    fn patch(set: &[(&str, &str)], unset: &[&str]) -> Op {
        Op::RecordPatch {
            collection: "c".into(),
            id: "r".into(),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            unset: unset.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn delete() -> Op {
        Op::RecordDelete {
            collection: "c".into(),
            id: "r".into(),
            base: None,
        }
    }

    fn run(strategy: &ConflictStrategy, ops: &[(Op, Stamp)]) -> Option<RecordRow> {
        let mut row: Option<RecordRow> = None;
        for (op, s) in ops {
            if let Some(new) = apply_record_op(strategy, row.as_ref(), op, *s).expect("applies") {
                row = Some(new);
            }
        }
        row
    }

    /// Every order gives the same state; with `replay`, so does applying an
    /// operation twice (commit-level deduplication makes that moot for
    /// custom resolvers, which need not be idempotent).
    fn all_orders(strategy: &ConflictStrategy, ops: &[(Op, Stamp)], replay: bool) {
        let expected = run(strategy, ops);
        let n = ops.len();
        // Every permutation of up to 4 operations, plus duplicates.
        let mut idx: Vec<usize> = (0..n).collect();
        permute(&mut idx, 0, &mut |order| {
            let mut seq: Vec<(Op, Stamp)> = order.iter().map(|&i| ops[i].clone()).collect();
            if replay {
                seq.push(ops[order[0]].clone());
            }
            assert_eq!(run(strategy, &seq), expected, "order {order:?}");
        });
    }

    fn permute(idx: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == idx.len() {
            f(idx);
            return;
        }
        for i in k..idx.len() {
            idx.swap(k, i);
            permute(idx, k + 1, f);
            idx.swap(k, i);
        }
    }

    #[test]
    fn lww_equal_wall_clock_is_deterministic() {
        let s = &ConflictStrategy::LastWriteWins;
        let ops = [
            (put(r#"{"a":1}"#), stamp(5, 1)),
            (put(r#"{"a":2}"#), stamp(5, 2)),
            (delete(), stamp(4, 3)),
        ];
        all_orders(s, &ops, true);
        assert_eq!(
            run(s, &ops).and_then(|r| r.value).as_deref(),
            Some(r#"{"a":2}"#)
        );
    }

    #[test]
    fn merge_fields_keeps_concurrent_fields() {
        let s = &ConflictStrategy::MergeFields;
        let ops = [
            (
                patch(&[("title", "\"A\""), ("body", "\"x\"")], &[]),
                stamp(1, 1),
            ),
            (patch(&[("title", "\"B\"")], &[]), stamp(2, 2)),
            (patch(&[("body", "\"y\"")], &[]), stamp(3, 1)),
            (patch(&[], &["title"]), stamp(1, 5)),
        ];
        all_orders(s, &ops, true);
        let row = run(s, &ops).expect("row");
        assert_eq!(row.value.as_deref(), Some(r#"{"body":"y","title":"B"}"#));
    }

    #[test]
    fn merge_fields_delete_then_later_write() {
        let s = &ConflictStrategy::MergeFields;
        let ops = [
            (patch(&[("a", "1"), ("b", "2")], &[]), stamp(1, 1)),
            (delete(), stamp(2, 2)),
            (patch(&[("c", "3")], &[]), stamp(3, 1)),
        ];
        all_orders(s, &ops, true);
        assert_eq!(
            run(s, &ops).and_then(|r| r.value).as_deref(),
            Some(r#"{"c":3}"#)
        );
        let deleted = run(s, &ops[..2]).expect("row");
        assert_eq!(deleted.value, None);
    }

    #[test]
    fn custom_resolver_sees_stamp_order() {
        let s = ConflictStrategy::custom(|c| {
            let a = c.earlier.value.and_then(|v| v["n"].as_i64()).unwrap_or(0);
            let b = c.later.value.and_then(|v| v["n"].as_i64()).unwrap_or(0);
            Some(serde_json::json!({ "n": a + b }))
        });
        let ops = [
            (put(r#"{"n":1}"#), stamp(1, 1)),
            (put(r#"{"n":2}"#), stamp(1, 2)),
        ];
        all_orders(&s, &ops, false);
        assert_eq!(
            run(&s, &ops).and_then(|r| r.value).as_deref(),
            Some(r#"{"n":3}"#)
        );
        // A write on top of the current version fast-forwards without the resolver.
        let current = run(&s, &ops).expect("row");
        let on_top = Op::RecordPut {
            collection: "c".into(),
            id: "r".into(),
            value: r#"{"n":10}"#.into(),
            base: Some(current.stamp),
        };
        let next = apply_record_op(&s, Some(&current), &on_top, stamp(9, 1))
            .expect("ok")
            .expect("row");
        assert_eq!(next.value.as_deref(), Some(r#"{"n":10}"#));
    }

    #[test]
    fn diff_sets_changed_and_unsets_removed() {
        let old = serde_json::json!({"a": 1, "b": 2});
        let new = serde_json::json!({"a": 1, "c": 3});
        let (set, unset) = field_diff(Some(&old), new.as_object().expect("object"));
        assert_eq!(set, vec![("c".to_string(), "3".to_string())]);
        assert_eq!(unset, vec!["b".to_string()]);
    }
}
