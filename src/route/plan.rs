//! Estimate and decide one call: pure CPU, no I/O; what `Router::route` and `explain` run.

use super::*;

/// [`plan`], consulting `learning`'s model with a fresh draw, with every
/// candidate model when `trace` (`explain`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_with(
    table: &RuleTable,
    workflow: &Workflow,
    call: &RouteCall,
    steer: Steer,
    cache: Option<&ContextCache>,
    sketches: Option<&ScoreSketches>,
    learning: &dyn LearningGate,
    trace: bool,
) -> (Result<Planned, Error>, Vec<Candidate>) {
    let learn = LearnWith {
        learner: learning.learner(),
        draw: learning.draw(),
    };
    let mut candidates = Vec::new();
    let across = Across { cache, sketches };
    let p = plan(
        table,
        workflow,
        call,
        steer,
        across,
        Some(learn),
        trace.then_some(&mut candidates),
    );
    (p, candidates)
}

/// What [`plan`] reads that outlives one call; the default is neither.
#[derive(Clone, Copy, Default)]
pub struct Across<'a> {
    /// Message work reused across calls, and the prefixes warm on each model.
    pub cache: Option<&'a ContextCache>,
    /// Places the request's score in its workflow's traffic (`None`: the
    /// model's calibration alone).
    pub sketches: Option<&'a ScoreSketches>,
}

/// Estimates and decides one call: pure CPU, no I/O.
///
/// With a `cache`, message work is reused across calls and warm prefixes are
/// priced at each model's cached rate. Without one, everything is computed
/// afresh. `trace`, when given, receives every candidate model (`explain`).
pub fn plan(
    table: &RuleTable,
    workflow: &Workflow,
    call: &RouteCall,
    steer: Steer,
    across: Across<'_>,
    learn: Option<LearnWith<'_>>,
    trace: Option<&mut Vec<Candidate>>,
) -> Result<Planned, Error> {
    let Across { cache, sketches } = across;
    let messages = call.message_refs();
    let (work, fingerprints) = match cache {
        Some(c) => {
            let (work, fps) = c.work(&messages, &workflow.encodings);
            (work, Some(fps))
        }
        None => (compute_work(&messages, &workflow.encodings), None),
    };
    let mut est = estimate(
        table,
        workflow,
        &call.task_kind,
        &messages,
        &work,
        call.max_output_tokens,
    );
    if let Some(s) = sketches {
        est.complexity_quantile = s.quantile(&table.understanding, &workflow.name, est.complexity);
    }
    let cached = match (cache, &fingerprints) {
        (Some(c), Some(fps)) => c.cached_tokens(table, workflow, fps, &work),
        _ => Vec::new(),
    };
    let mut input = RouteInput {
        attempt: call.attempt,
        deferrable: call.deferrable,
        capabilities: call.capabilities,
        downgrade: steer.downgrade,
        learned: None,
        rejected_tier: steer.rejected_tier,
        paced: steer.paced,
    };
    let mut features = None;
    if let Some(l) = learn.filter(|_| workflow.learning.enabled) {
        let texts = asked(&messages).map(|m| m.content);
        let request = Request {
            task_kind: &est.task_kind,
            complexity: &est.features,
            prior: est.complexity,
            tokens: est.input_tokens.into_iter().max().unwrap_or(0),
        };
        let f = Features::extract(texts, &request);
        let available = available_tiers(workflow, est.class);
        input.learned = Some(Learned::gather(
            l.learner,
            &workflow.name,
            available,
            &f,
            &workflow.learning,
            l.draw,
        ));
        features = Some(f);
    }
    let decision =
        decide(table, workflow, &input, &est, &cached, trace).map_err(|e| Error::NoAdequateModel(e.message))?;
    Ok(Planned {
        est,
        decision,
        fingerprints,
        features,
        learned: input.learned,
    })
}

/// What `plan` needs to consult the learned model.
#[derive(Clone, Copy)]
pub struct LearnWith<'a> {
    pub learner: &'a Learner,
    /// Uniform in 0..1: below the workflow's exploration rate, the call
    /// explores.
    pub draw: f64,
}

/// What `plan` worked out for one call.
pub struct Planned {
    pub est: Estimate,
    pub decision: Decision,
    /// The request's prefix chain, when planned with a cache.
    pub fingerprints: Option<Fingerprints>,
    /// What the learned model saw, when it was consulted (taken by the
    /// learning gate once the call is routed).
    pub features: Option<Features>,
    /// What the learned model predicted, when it was consulted.
    pub learned: Option<Learned>,
}

/// Records that the call was routed to its model: its prefixes are now warm
/// there. Calls that were denied or escalated are not sent, so not recorded.
pub(crate) fn record_routed(cache: &ContextCache, table: &RuleTable, planned: &Planned) {
    if let Some(fps) = &planned.fingerprints {
        if planned.decision.cached_tokens > 0 {
            cache
                .counters
                .prefix_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        cache.record(&table.models[planned.decision.model].name, fps);
    }
}
