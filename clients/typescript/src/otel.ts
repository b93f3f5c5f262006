// The agent's trace, when the caller uses the OpenTelemetry API
// (`@opentelemetry/api`, an optional peer dependency): Route joins the
// caller's active span, and the wrapped provider call gets a span of its
// own, a sibling of Route linked to it, carrying the call's usage and its
// cost. Without the API installed every function here does nothing.

import type { Decision } from "./index.js";

type Api = typeof import("@opentelemetry/api");
type Span = import("@opentelemetry/api").Span;
type SpanContext = import("@opentelemetry/api").SpanContext;
type Link = import("@opentelemetry/api").Link;

let loading: Promise<Api | undefined> | undefined;

/** The OpenTelemetry API, if the caller has it installed. */
export function otelApi(): Promise<Api | undefined> {
  loading ??= import("@opentelemetry/api").then(
    (m: any) => (m?.trace ? m : m?.default) as Api,
    () => undefined,
  );
  return loading;
}

/** The GenAI conventions' well-known `gen_ai.provider.name` for a provider
 * as the rules name it (the sidecar maps them the same way). */
export function providerName(rulesName: string): string {
  const known: Record<string, string> = {
    google: "gcp.gemini",
    gemini: "gcp.gemini",
    vertex: "gcp.vertex_ai",
    vertex_ai: "gcp.vertex_ai",
    mistral: "mistral_ai",
    xai: "x_ai",
    bedrock: "aws.bedrock",
    aws: "aws.bedrock",
    azure: "azure.ai.openai",
    azure_openai: "azure.ai.openai",
    watsonx: "ibm.watsonx.ai",
  };
  return known[rulesName] ?? rulesName;
}

const hex2 = (n: number) => n.toString(16).padStart(2, "0");

/** `traceparent` and `tracestate` of the caller's active span, through the
 * registered propagator, or written from the span's context when none is
 * registered. Empty when nothing is active. */
export async function traceHeaders(api?: Api): Promise<Record<string, string>> {
  api ??= await otelApi();
  if (!api) return {};
  const carrier: Record<string, string> = {};
  api.propagation.inject(api.context.active(), carrier);
  if (carrier.traceparent) return carrier;
  const sc = api.trace.getActiveSpan()?.spanContext();
  if (!sc || !api.trace.isSpanContextValid(sc)) return {};
  const out: Record<string, string> = { traceparent: `00-${sc.traceId}-${sc.spanId}-${hex2(sc.traceFlags)}` };
  const state = sc.traceState?.serialize();
  if (state) out.tracestate = state;
  return out;
}

/** The Route span a decision names, unless it is the caller's own context
 * handed back (the sidecar does not trace). */
function routeContext(api: Api, d: Decision): SpanContext | undefined {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(d.traceparent ?? "");
  if (!m) return undefined;
  const sc: SpanContext = { traceId: m[1], spanId: m[2], traceFlags: parseInt(m[3], 16), isRemote: true };
  if (!api.trace.isSpanContextValid(sc)) return undefined;
  if (api.trace.getActiveSpan()?.spanContext().spanId === sc.spanId) return undefined;
  return sc;
}

/** `[{context: Route's span}]`, for an agent's own model-call span. */
export async function linkToRoute(d: Decision): Promise<Link[]> {
  const api = await otelApi();
  const sc = api && routeContext(api, d);
  return sc ? [{ context: sc }] : [];
}

/** Sets `gen_ai.usage.cost.amount` (USD), `.currency` and `.source` on a
 * span: the open GenAI cost proposal's names. */
export function setCost(span: Span, costNanousd: number): void {
  span.setAttribute("gen_ai.usage.cost.amount", costNanousd / 1e9);
  span.setAttribute("gen_ai.usage.cost.currency", "USD");
  span.setAttribute("gen_ai.usage.cost.source", "switchyard");
}

/** The wrapped provider call's span and how to run inside it. */
export interface ModelCall {
  /** Runs `f` with the span active (the provider call's headers see it). */
  within<T>(f: () => Promise<T>): Promise<T>;
  /** W3C headers for the provider call. */
  headers(): Promise<Record<string, string>>;
  end(usage?: { inputTokens: number; cachedInputTokens: number; outputTokens: number }, costNanousd?: number, error?: unknown): void;
}

/** Starts `chat {providerModel}`, a CLIENT span in the caller's active trace
 * (Route's sibling), linked to Route, with `switchyard.decision.id`. */
export async function startModelCall(d: Decision): Promise<ModelCall> {
  const api = await otelApi();
  const fallback: Record<string, string> = d.traceparent ? { traceparent: d.traceparent } : {};
  if (!api) {
    return { within: (f) => f(), headers: async () => fallback, end: () => {} };
  }
  const route = routeContext(api, d);
  const attributes: Record<string, string> = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": providerName(d.provider),
    "gen_ai.request.model": d.providerModel,
    "switchyard.decision.id": d.decisionId,
  };
  if (d.workflow) attributes["switchyard.workflow"] = d.workflow;
  if (d.outcomeId) attributes["switchyard.outcome.id"] = d.outcomeId;
  const span = api.trace.getTracer("@switchyard/client", "0.1.0").startSpan(`chat ${d.providerModel}`, {
    kind: api.SpanKind.CLIENT,
    links: route ? [{ context: route }] : [],
    attributes,
  });
  const ctx = api.trace.setSpan(api.context.active(), span);
  const recording = span.isRecording() && api.trace.isSpanContextValid(span.spanContext());
  return {
    within: (f) => api.context.with(ctx, f),
    headers: async () => (recording ? api.context.with(ctx, () => traceHeaders(api)) : fallback),
    end: (usage, cost, error) => {
      if (usage) {
        span.setAttribute("gen_ai.usage.input_tokens", usage.inputTokens);
        span.setAttribute("gen_ai.usage.cache_read.input_tokens", usage.cachedInputTokens);
        span.setAttribute("gen_ai.usage.output_tokens", usage.outputTokens);
      }
      if (cost !== undefined) setCost(span, cost);
      if (error !== undefined) {
        const e = error instanceof Error ? error : new Error(String(error));
        span.recordException(e);
        span.setAttribute("error.type", e.constructor?.name ?? "Error");
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: e.message.slice(0, 256) });
      }
      span.end();
    },
  };
}
