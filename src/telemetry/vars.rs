//! The standard `OTEL_*` variables, checked before the SDK reads them.
//!
//! The OpenTelemetry SDK reads these variables itself, and on a value it
//! cannot use it logs a warning and falls back to a default: a typo in a
//! sampler name would trace everything, a bad endpoint would trace nothing.
//! Switchyard checks each one first, with the SDK's meaning, so that `serve`
//! can exit 64 with a sentence that names the variable and says what to
//! write instead, before it binds a port.

use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

/// The first of `names` (the traces-specific variable, then the general
/// one) that is set and not blank, with its value: the SDK's precedence.
fn var(env: &impl Fn(&str) -> Option<String>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| {
        let v = env(name)?;
        let v = v.trim();
        (!v.is_empty()).then(|| (name, v.to_string()))
    })
}

/// A whole number from 1 to `max` from the first set variable of `names`.
fn number(
    env: &impl Fn(&str) -> Option<String>,
    names: &[&'static str],
    unit: &str,
    max: u64,
) -> Result<Option<u64>, String> {
    match var(env, names) {
        Some((name, v)) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "{name}={v}: expected a positive whole number of {unit}, at most {max}"
            )),
        },
        None => Ok(None),
    }
}

/// An hour, in milliseconds: the longest export timeout.
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// A day, in milliseconds: the longest time between scheduled exports.
const MAX_DELAY_MS: u64 = 86_400_000;
/// The most spans queued or sent in one export.
const MAX_SPANS: u64 = 1 << 20;

fn is(env: &impl Fn(&str) -> Option<String>, name: &str, value: &str) -> bool {
    env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether traces are to be exported, having checked every variable the
/// exporter, the batch processor, the sampler and the resource read.
/// Export is on when an endpoint is set, unless `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none`. An error names the variable and what to fix.
pub fn export_wanted(env: impl Fn(&str) -> Option<String>) -> Result<bool, String> {
    if is(&env, "OTEL_SDK_DISABLED", "true") || is(&env, "OTEL_TRACES_EXPORTER", "none") {
        return Ok(false);
    }
    for (name, spoken) in [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
    ] {
        if let Some(v) = env(name) {
            if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case(spoken) {
                return Err(format!(
                    "{name}={v} is not supported: Switchyard sends spans over OTLP/gRPC, uncompressed; \
                     set {name}={spoken} or unset it"
                ));
            }
        }
    }
    let Some((endpoint_var, endpoint)) = var(
        &env,
        &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
    ) else {
        return Ok(false);
    };
    let lower = endpoint.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "{endpoint_var}={endpoint}: TLS to the collector is not built in; \
             point it at a collector's plain-text gRPC port (http://…:4317), such as a node-local agent"
        ));
    }
    if !lower.starts_with("http://") || endpoint.parse::<http::Uri>().is_err() {
        return Err(format!(
            "{endpoint_var}={endpoint}: expected an http:// URL such as http://otel-collector:4317"
        ));
    }
    if let Some((name, v)) = var(
        &env,
        &["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"],
    ) {
        check_headers(&v).map_err(|e| format!("{name}: {e}"))?;
    }
    let ms = "milliseconds";
    number(
        &env,
        &["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
        ms,
        MAX_TIMEOUT_MS,
    )?;
    number(&env, &["OTEL_BSP_EXPORT_TIMEOUT"], ms, MAX_TIMEOUT_MS)?;
    number(&env, &["OTEL_BSP_SCHEDULE_DELAY"], ms, MAX_DELAY_MS)?;
    let max_queue = number(&env, &["OTEL_BSP_MAX_QUEUE_SIZE"], "spans", MAX_SPANS)?.unwrap_or(2_048);
    let max_batch = number(&env, &["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], "spans", MAX_SPANS)?.unwrap_or(512);
    if max_batch > max_queue {
        return Err(format!(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={max_batch} is larger than OTEL_BSP_MAX_QUEUE_SIZE={max_queue}; \
             a batch can hold at most the queue"
        ));
    }
    check_sampler(&env)?;
    if let Some(v) = env("OTEL_RESOURCE_ATTRIBUTES") {
        parse_pairs(&v).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?;
    }
    Ok(true)
}

/// Whether the operator named the service, in either of the two places the
/// SDK looks; if not, Switchyard names it `switchyard`.
pub fn service_named(env: impl Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SERVICE_NAME").is_some_and(|s| !s.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES")
            .and_then(|v| parse_pairs(&v).ok())
            .is_some_and(|pairs| pairs.iter().any(|(k, _)| k == "service.name"))
}

/// `OTEL_TRACES_SAMPLER` and `_ARG`, with the specification's names.
fn check_sampler(env: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let name = env("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase());
    let takes_ratio = match name.as_deref().unwrap_or("") {
        "" | "parentbased_always_on" | "parentbased_always_off" | "always_on" | "always_off" => false,
        "traceidratio" | "parentbased_traceidratio" => true,
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={other} is not a sampler; use always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ))
        }
    };
    match env("OTEL_TRACES_SAMPLER_ARG").map(|s| s.trim().to_string()) {
        Some(a) if takes_ratio && !a.is_empty() => match a.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
            _ => Err(format!(
                "OTEL_TRACES_SAMPLER_ARG={a}: expected a ratio from 0 to 1, such as 0.25"
            )),
        },
        _ => Ok(()),
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (W3C baggage style),
/// as `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` are written.
pub fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("`{item}` is not key=value"));
        };
        let key = k.trim().to_string();
        let value = percent_decode(v.trim()).ok_or_else(|| format!("`{key}` has a bad %-escape in its value"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// Strict percent-decoding: a `%` not followed by two hex digits, or bytes
/// that are not UTF-8, are an error rather than passed through.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode(b)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn check_headers(s: &str) -> Result<(), String> {
    for (mut key, value) in parse_pairs(s)? {
        key.make_ascii_lowercase();
        if MetadataKey::<Ascii>::from_bytes(key.as_bytes()).is_err() || key.ends_with("-bin") {
            return Err(format!("`{key}` is not a valid header name"));
        }
        if MetadataValue::<Ascii>::try_from(value.as_str()).is_err() {
            return Err(format!("the value of `{key}` is not a valid header value"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check(vars: &[(&str, &str)]) -> Result<bool, String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        export_wanted(|name| vars.get(name).cloned())
    }

    const EP: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_disabled() {
        assert_eq!(check(&[]), Ok(false));
        assert_eq!(check(&[EP]), Ok(true));
        assert_eq!(
            check(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]),
            Ok(true)
        );
        assert_eq!(check(&[EP, ("OTEL_SDK_DISABLED", "true")]), Ok(false));
        assert_eq!(check(&[EP, ("OTEL_TRACES_EXPORTER", "none")]), Ok(false));
    }

    #[test]
    fn every_bad_value_names_its_variable_and_the_fix() {
        for (vars, says) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "expected an http:// URL",
            ),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")], "TLS"),
            (
                vec![EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
            ),
            (vec![EP, ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")], "uncompressed"),
            (
                vec![EP, ("OTEL_EXPORTER_OTLP_HEADERS", "oops")],
                "OTEL_EXPORTER_OTLP_HEADERS: `oops` is not key=value",
            ),
            (vec![EP, ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz")], "bad %-escape"),
            (
                vec![EP, ("OTEL_EXPORTER_OTLP_HEADERS", "bad key=1")],
                "not a valid header name",
            ),
            (
                vec![EP, ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
                "OTEL_EXPORTER_OTLP_TIMEOUT=soon: expected a positive whole number of milliseconds",
            ),
            (vec![EP, ("OTEL_BSP_SCHEDULE_DELAY", "0")], "OTEL_BSP_SCHEDULE_DELAY=0"),
            (
                vec![EP, ("OTEL_BSP_MAX_QUEUE_SIZE", "10")],
                "a batch can hold at most the queue",
            ),
            (vec![EP, ("OTEL_TRACES_SAMPLER", "sometimes")], "is not a sampler"),
            (
                vec![
                    EP,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                "from 0 to 1",
            ),
            (
                vec![
                    EP,
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "half"),
                ],
                "from 0 to 1",
            ),
            (
                vec![EP, ("OTEL_RESOURCE_ATTRIBUTES", "oops")],
                "OTEL_RESOURCE_ATTRIBUTES: `oops` is not key=value",
            ),
        ] {
            let e = check(&vars).expect_err(says);
            assert!(e.contains(says), "{vars:?}: {e}");
        }
        // Good values pass.
        assert_eq!(
            check(&[
                EP,
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-tenant=acme%20ci,authorization=Bearer%20t"
                ),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
                ("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=agent%2D7"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ]),
            Ok(true)
        );
    }

    #[test]
    fn pairs_are_percent_decoded_and_the_service_name_is_found_in_either_place() {
        assert_eq!(
            parse_pairs("a=x%2Dy, b = two words%21").expect("valid"),
            vec![("a".into(), "x-y".into()), ("b".into(), "two words!".into())]
        );
        assert!(parse_pairs("a=%e2%82").is_err(), "not UTF-8");
        let named = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            service_named(|n| vars.get(n).cloned())
        };
        assert!(!named(&[]));
        assert!(named(&[("OTEL_SERVICE_NAME", "agent")]));
        assert!(named(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=agent")]));
        assert!(!named(&[("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")]));
    }
}
