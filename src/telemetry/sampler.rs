//! Which traces are recorded: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
//! with the specification's names and meanings.

/// A sampling decision for a new span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Records a trace when its ID's last 8 bytes, shifted right by one, fall
    /// below this bound (the OpenTelemetry Rust SDK's rule): every span of a
    /// trace gets the same decision.
    Ratio(u64),
    /// Follows the caller's sampled flag; the inner sampler decides for new traces.
    ParentBased(Root),
}

/// A parent-based sampler's decision for a trace that starts here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(u64),
}

fn ratio_bound(ratio: f64) -> u64 {
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

fn ratio_keeps(bound: u64, trace_id: &[u8; 16]) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl Sampler {
    /// Reads the variables through `env`. An unknown sampler or a bad ratio
    /// is an error that says what to write instead.
    pub fn from_vars(env: impl Fn(&str) -> Option<String>) -> Result<Sampler, String> {
        let name = env("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase());
        let ratio = || -> Result<u64, String> {
            match env("OTEL_TRACES_SAMPLER_ARG").map(|s| s.trim().to_string()) {
                None => Ok(ratio_bound(1.0)),
                Some(a) if a.is_empty() => Ok(ratio_bound(1.0)),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(ratio_bound(r)),
                    _ => Err(format!(
                        "OTEL_TRACES_SAMPLER_ARG={a}: expected a ratio from 0 to 1, such as 0.25"
                    )),
                },
            }
        };
        Ok(match name.as_deref().unwrap_or("") {
            "" | "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio()?),
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other} is not a sampler; use always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ))
            }
        })
    }

    /// Whether a span in `trace_id`, with the caller's sampled flag when
    /// there is a caller, is recorded.
    pub fn keeps(&self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
        match (self, parent_sampled) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(bound), _) => ratio_keeps(*bound, trace_id),
            (Sampler::ParentBased(_), Some(sampled)) => sampled,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::Ratio(bound)), None) => ratio_keeps(*bound, trace_id),
        }
    }
}
