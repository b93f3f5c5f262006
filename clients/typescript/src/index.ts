// Switchyard's TypeScript client: route each model call through the sidecar,
// report what it used, and say how the work ended. Prompt text goes to the
// sidecar, which counts and fingerprints it and never stores or logs it.

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import { traceHeaders } from "./otel.js";

const PROTO = fileURLToPath(new URL("../proto/switchyard/v1/router.proto", import.meta.url));

/** One chat message; `content` may be a string or a list of text parts. */
export interface Message {
  role: string;
  content?: unknown;
}

/** What Route decided for one model call. */
export interface Decision {
  decisionId: string;
  /** The rules' name for the model. */
  model: string;
  provider: string;
  /** The ID to call the provider's API with. */
  providerModel: string;
  /** "routed", or "downgraded" when a budget's soft threshold stepped the tier down. */
  status: "routed" | "downgraded";
  /** Nano-USD (1e-9 USD); exact up to about 9 million dollars. */
  estimatedCostNanousd: number;
  /** W3C trace context to send on the provider call, so it joins the trace. */
  traceparent: string;
  outcomeId: string;
  workflow: string;
  /** The task kind the call was routed as. */
  taskKind: string;
  /** Where taskKind came from: "declared", "inferred" (read from the text) or "default". */
  taskKindSource: string;
}

/** A workflow's budget this period, in nano-USD. */
export interface Budget {
  workflow: string;
  limitNanousd: number;
  spentNanousd: number;
  reservedNanousd: number;
  remainingNanousd: number;
}

export interface RouteRequest {
  workflow: string;
  messages: Message[];
  outcomeId?: string;
  taskKind?: string;
  maxOutputTokens?: number;
  attempt?: number;
  labels?: Record<string, string>;
  deferrable?: boolean;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
  /** The part of `inputTokens` the provider served from its cache. */
  cachedInputTokens?: number;
  /** The part of `inputTokens` the provider wrote to its cache. */
  cacheWriteInputTokens?: number;
  failed?: boolean;
}

export type OutcomeStatus = "accepted" | "rejected" | "corrected" | "abandoned";

/** A call to the sidecar failed: `code` is the gRPC status, `message` what to fix. */
export class SwitchyardError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
    this.name = "SwitchyardError";
  }
}

/** The call would cross a budget: a person must approve more. */
export class EscalationRequired extends SwitchyardError {
  constructor(
    readonly escalationId: string,
    message: string,
  ) {
    super(grpc.status.RESOURCE_EXHAUSTED, message);
    this.name = "EscalationRequired";
  }
}

/** The call is over a budget that does not escalate. */
export class Denied extends SwitchyardError {
  constructor(message: string) {
    super(grpc.status.RESOURCE_EXHAUSTED, message);
    this.name = "Denied";
  }
}

export interface SidecarOptions {
  /** The sidecar's gRPC address; 127.0.0.1:50051 by default. */
  target?: string;
  /** Sent as `authorization: Bearer <key>`. */
  apiKey?: string;
  /** Each call's deadline; 5 s by default. */
  timeoutMs?: number;
}

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: any) => void) => void;

let loaded: grpc.ServiceClientConstructor | undefined;

function routerClient(): grpc.ServiceClientConstructor {
  if (!loaded) {
    const def = protoLoader.loadSync(PROTO, { longs: Number, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(def) as any;
    loaded = pkg.switchyard.v1.Router as grpc.ServiceClientConstructor;
  }
  return loaded;
}

/** A message's text: a string, or the text parts of a list of content parts. */
export function text(content: unknown): string {
  if (content == null) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => (typeof p === "string" ? p : p && typeof p.text === "string" ? p.text : ""))
      .filter((t) => t !== "")
      .join("\n");
  }
  return String(content);
}

const OUTCOMES: Record<OutcomeStatus, string> = {
  accepted: "OUTCOME_STATUS_ACCEPTED",
  rejected: "OUTCOME_STATUS_REJECTED",
  corrected: "OUTCOME_STATUS_CORRECTED",
  abandoned: "OUTCOME_STATUS_ABANDONED",
};

/** The client for the sidecar beside this service. */
export class Sidecar {
  private readonly client: grpc.Client & Record<string, Unary>;
  private readonly apiKey?: string;
  readonly timeoutMs: number;

  constructor(opts: SidecarOptions = {}) {
    const Client = routerClient();
    this.client = new Client(opts.target ?? "127.0.0.1:50051", grpc.credentials.createInsecure()) as any;
    this.apiKey = opts.apiKey;
    this.timeoutMs = opts.timeoutMs ?? 5000;
  }

  private async call<T>(method: string, request: object): Promise<T> {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set("authorization", `Bearer ${this.apiKey}`);
    // The caller's active trace context, when it uses the OpenTelemetry
    // API: Route becomes a child of the caller's span.
    for (const [k, v] of Object.entries(await traceHeaders())) md.set(k, v);
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      this.client[method].call(this.client, request, md, { deadline }, (e, r) => {
        if (e) reject(new SwitchyardError(e.code, e.details || e.message));
        else resolve(r as T);
      });
    });
  }

  /** The cheapest adequate model for this call; rejects with
   * `EscalationRequired` or `Denied` when a budget stops it. Called as
   * `route(workflow, messages, {outcomeId, …})`, as the Python client is, or
   * with one object. */
  async route(workflow: string, messages: Message[], opts?: Omit<RouteRequest, "workflow" | "messages">): Promise<Decision>;
  async route(req: RouteRequest): Promise<Decision>;
  async route(
    first: string | RouteRequest,
    messages?: Message[],
    opts: Omit<RouteRequest, "workflow" | "messages"> = {},
  ): Promise<Decision> {
    const req: RouteRequest = typeof first === "string" ? { ...opts, workflow: first, messages: messages ?? [] } : first;
    const r: any = await this.call("route", {
      workflow: req.workflow,
      outcomeId: req.outcomeId ?? "",
      messages: req.messages.map((m) => ({ role: String(m.role ?? "user"), content: text(m.content) })),
      attempt: req.attempt ?? 1,
      taskKind: req.taskKind ?? "",
      maxOutputTokens: req.maxOutputTokens ?? 0,
      deferrable: req.deferrable ?? false,
      labels: req.labels ?? {},
    });
    if (r.status === "ROUTE_STATUS_ESCALATION_REQUIRED") throw new EscalationRequired(r.escalationId, r.reason);
    if (r.status === "ROUTE_STATUS_DENIED") throw new Denied(r.reason);
    return {
      decisionId: r.decisionId,
      model: r.model,
      provider: r.provider,
      providerModel: r.providerModel || r.model,
      status: r.status === "ROUTE_STATUS_DOWNGRADED" ? "downgraded" : "routed",
      estimatedCostNanousd: Number(r.estimatedCostNanousd),
      traceparent: r.traceparent,
      outcomeId: req.outcomeId ?? "",
      workflow: req.workflow,
      taskKind: r.taskKind ?? "",
      taskKindSource: r.taskKindSource ?? "",
    };
  }

  /** Settles the call; resolves to its cost in nano-USD. Called as
   * `reportUsage(decision, inputTokens, outputTokens, {cachedInputTokens, failed})`,
   * as the Python client is, or with the usage as one object. */
  async reportUsage(
    decision: Decision | string,
    inputTokens: number,
    outputTokens: number,
    opts?: { cachedInputTokens?: number; cacheWriteInputTokens?: number; failed?: boolean },
  ): Promise<number>;
  async reportUsage(decision: Decision | string, usage: Usage): Promise<number>;
  async reportUsage(
    decision: Decision | string,
    first: number | Usage,
    outputTokens?: number,
    opts: { cachedInputTokens?: number; cacheWriteInputTokens?: number; failed?: boolean } = {},
  ): Promise<number> {
    const usage: Usage = typeof first === "number" ? { ...opts, inputTokens: first, outputTokens: outputTokens ?? 0 } : first;
    const d = typeof decision === "string" ? undefined : decision;
    const ack: any = await this.call("reportUsage", {
      decisionId: d ? d.decisionId : decision,
      model: d ? d.model : "",
      inputTokens: usage.inputTokens,
      cachedInputTokens: usage.cachedInputTokens ?? 0,
      cacheWriteInputTokens: usage.cacheWriteInputTokens ?? 0,
      outputTokens: usage.outputTokens,
      failed: usage.failed ?? false,
    });
    return Number(ack.costNanousd);
  }

  /** Whether this call's output was accepted: what routing learns from. */
  async feedback(decision: Decision | string, accepted: boolean): Promise<void> {
    const decisionId = typeof decision === "string" ? decision : decision.decisionId;
    await this.call("recordFeedback", { decisionId, accepted });
  }

  /** How the work ended. */
  async outcome(
    outcomeId: string,
    workflow: string,
    status: OutcomeStatus,
    opts: { valueUsd?: number; humanMinutes?: number } = {},
  ): Promise<void> {
    if (!(status in OUTCOMES)) {
      throw new TypeError(`status ${JSON.stringify(status)} is not one of ${Object.keys(OUTCOMES).join(", ")}`);
    }
    await this.call("recordOutcome", {
      outcomeId,
      workflow,
      status: OUTCOMES[status],
      valueUsd: opts.valueUsd,
      humanMinutes: opts.humanMinutes,
    });
  }

  /** The workflow's budget this period, as the sidecar's store holds it. */
  async budget(workflow: string): Promise<Budget> {
    const b: any = await this.call("getBudget", { workflow });
    return {
      workflow: b.workflow,
      limitNanousd: Number(b.limitNanousd),
      spentNanousd: Number(b.spentNanousd),
      reservedNanousd: Number(b.reservedNanousd),
      remainingNanousd: Number(b.remainingNanousd),
    };
  }

  close(): void {
    this.client.close();
  }
}

export { routed } from "./openai.js";
export { linkToRoute, setCost, providerName } from "./otel.js";
