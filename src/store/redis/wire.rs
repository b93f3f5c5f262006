//! Redis replies and the fields the store packs into them: decoding
//! values, a decision's packed description, and a ledger stream entry.

use redis::Value;

use super::SEP;
use crate::ledger::CallRecord;
use crate::store::{NewReservation, ReservationRecord, ReservationState};

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

pub(super) fn int(v: Option<&Value>) -> i64 {
    v.map(text).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A script's reply as strings.
pub(super) fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(text).collect(),
        other => vec![text(&other)],
    }
}

/// The field map of an HGETALL reply.
pub(super) fn fields(v: Value) -> std::collections::HashMap<String, String> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Array(items) => items
            .chunks(2)
            .map(|c| (text(&c[0]), c.get(1).map(text).unwrap_or_default()))
            .collect(),
        _ => Default::default(),
    }
}

/// The record of a decision this sidecar made that Redis has not confirmed:
/// enough to price its usage.
pub(super) fn unconfirmed(r: &NewReservation) -> ReservationRecord {
    ReservationRecord {
        decision_id: r.decision_id.clone(),
        workflow: r.workflow.clone(),
        outcome_id: r.outcome_id.clone(),
        model: r.model.clone(),
        deferrable: r.deferrable,
        amount_nanos: r.amount_nanos,
        state: ReservationState::Reserved,
        actual_nanos: None,
        caller: r.caller.to_string(),
        prices: Some(r.prices),
        tier: Some(r.tier),
    }
}

/// A decision's description, packed into one field of its record:
/// workflow, outcome, model, deferrable, created and expiry times.
pub(super) fn meta(r: &NewReservation) -> String {
    let p = &r.prices;
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
        r.workflow,
        r.outcome_id,
        r.model,
        u8::from(r.deferrable),
        r.now_ms,
        r.expires_ms,
        u8::from(r.downgraded),
        label_ref(&r.labels),
        r.caller,
        p.input_nanos_per_mtok,
        p.cached_input_nanos_per_mtok,
        p.output_nanos_per_mtok,
        p.batch_discount_bp,
        r.tier,
        p.cache_write_input_nanos_per_mtok
    )
}

/// Marks a label set named by reference (labels hold no control characters).
pub(super) const LABEL_REF: char = '\u{1e}';

/// How a decision's description names its labels: by the hash of their text,
/// whose one copy is in the workflow's `labels` hash ([`RedisStore::pack`]).
pub(super) fn label_ref(labels: &str) -> String {
    if labels.is_empty() {
        return String::new();
    }
    format!("{LABEL_REF}{:016x}", xxhash_rust::xxh3::xxh3_64(labels.as_bytes()))
}

/// A settlement's usage, packed into one field: tokens, failed, when.
pub(super) fn usage_field(u: &crate::store::Usage, now_ms: i64) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
        u.input_tokens,
        u.cached_input_tokens,
        u.output_tokens,
        u8::from(u.failed),
        now_ms
    )
}

/// The caller, prices and tier in a decision's description (fields 8 to
/// 14), `None` for those older records lack; a record older than the
/// cache-write price (field 14) reads it as the input price.
pub(super) fn meta_caller_prices(meta: &str) -> (String, Option<crate::rules::Prices>, Option<u8>) {
    let f: Vec<&str> = meta.split(SEP).collect();
    let caller = f.get(8).copied().unwrap_or_default().to_string();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let prices = match (n(9), n(10), n(11), f.get(12).and_then(|v| v.parse::<u32>().ok())) {
        (Some(input), Some(cached), Some(output), Some(bp)) => Some(crate::rules::Prices {
            input_nanos_per_mtok: input,
            cached_input_nanos_per_mtok: cached,
            cache_write_input_nanos_per_mtok: n(14).unwrap_or(input),
            output_nanos_per_mtok: output,
            batch_discount_bp: bp,
        }),
        _ => None,
    };
    let tier = f.get(13).and_then(|v| v.parse::<u8>().ok());
    (caller, prices, tier)
}

/// A ledger stream entry's fields.
pub(super) fn entry_fields(v: &Value) -> Option<std::collections::HashMap<String, String>> {
    match v {
        Value::Array(parts) if parts.len() == 2 => Some(fields(parts[1].clone())),
        _ => None,
    }
}

/// A stream entry's field, as the bytes stored (binary-safe, unlike
/// [`entry_fields`]).
pub(super) fn entry_bytes<'v>(entry: &'v Value, name: &str) -> Option<&'v [u8]> {
    let Value::Array(parts) = entry else { return None };
    let Some(Value::Array(kv)) = parts.get(1) else {
        return None;
    };
    kv.chunks(2).find_map(|c| match (&c[0], c.get(1)) {
        (Value::BulkString(k), Some(Value::BulkString(v))) if k == name.as_bytes() => Some(v.as_slice()),
        _ => None,
    })
}

/// The call a ledger entry records, if it is one.
pub(super) fn call_of(f: &std::collections::HashMap<String, String>) -> Option<CallRecord> {
    if f.get("k").map(String::as_str) != Some("call") {
        return None;
    }
    let meta: Vec<&str> = f.get("meta")?.split(SEP).collect();
    let usage: Vec<&str> = f.get("usage")?.split(SEP).collect();
    let m = |i: usize| meta.get(i).copied().unwrap_or_default();
    let u = |i: usize| usage.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    Some(CallRecord {
        decision_id: f.get("d")?.clone(),
        workflow: m(0).to_string(),
        outcome_id: m(1).to_string(),
        model: m(2).to_string(),
        created_ms: m(4).parse().ok()?,
        settled_ms: u(4),
        cost_nanos: f.get("cost")?.parse().ok()?,
        input_tokens: u(0) as u64,
        cached_input_tokens: u(1) as u64,
        output_tokens: u(2) as u64,
        failed: u(3) == 1,
        downgraded: m(6) == "1",
        labels: m(7).to_string(),
        snapshot: Vec::new(),
    })
}

/// The workflow a scope key belongs to: keys are `<workflow>|…`.
pub(super) fn workflow_of(scope: &str) -> &str {
    scope.split('|').next().unwrap_or(scope)
}
