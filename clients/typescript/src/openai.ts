// An OpenAI client (the `openai` npm SDK) whose chat completions are routed
// through Switchyard:
//
//   const client = routed(new OpenAI(), new Sidecar(), { workflow: "support" });
//   const reply = await client.chat.completions.create({
//     model: "auto", messages, switchyard: { outcomeId: "ticket-42" } });
//
// `model` is replaced by Switchyard's choice (its provider model ID). Usage
// is reported from the response's `usage`, cached tokens included; a call
// that throws is reported as failed and the error rethrown; a stream asked
// for `stream_options: { include_usage: true }` reports at its end. The
// response's `switchyard` is the decision.

import type { Decision, Sidecar } from "./index.js";
import { startModelCall, type ModelCall } from "./otel.js";

/** Extra fields `create` takes, stripped before the provider call. */
export interface SwitchyardOptions {
  outcomeId?: string;
  taskKind?: string;
  attempt?: number;
  labels?: Record<string, string>;
  deferrable?: boolean;
}

interface Counted {
  inputTokens: number;
  cachedInputTokens: number;
  outputTokens: number;
}

/** Input (cached included), cached and output tokens from an OpenAI usage. */
export function usageOf(response: any): Counted | undefined {
  const u = response?.usage;
  if (!u) return undefined;
  return {
    inputTokens: u.prompt_tokens ?? 0,
    cachedInputTokens: u.prompt_tokens_details?.cached_tokens ?? 0,
    outputTokens: u.completion_tokens ?? 0,
  };
}

async function report(
  sidecar: Sidecar,
  d: Decision,
  u: Counted | undefined,
  failed: boolean,
  span: ModelCall,
  error?: unknown,
): Promise<void> {
  if (!u && !failed) {
    process.emitWarning(
      `the provider's response for decision ${d.decisionId} carries no usage: reported as 0 tokens; ` +
        "for streams, pass stream_options: { include_usage: true }",
    );
  }
  const cost = await sidecar.reportUsage(d, {
    inputTokens: u?.inputTokens ?? 0,
    cachedInputTokens: u?.cachedInputTokens ?? 0,
    outputTokens: u?.outputTokens ?? 0,
    failed,
  });
  span.end(u, cost, error);
}

/** A stream that reports the call's usage when it ends. */
async function* reporting(stream: AsyncIterable<any>, sidecar: Sidecar, d: Decision, span: ModelCall): AsyncGenerator<any> {
  let usage: Counted | undefined;
  let error: unknown;
  let failed = false;
  try {
    for await (const chunk of stream) {
      usage = usageOf(chunk) ?? usage;
      yield chunk;
    }
  } catch (e) {
    failed = true;
    error = e;
    throw e;
  } finally {
    // Also when the caller stops reading: what was used so far is charged.
    await report(sidecar, d, usage, failed, span, error);
  }
}

function routedCreate(create: (...args: any[]) => any, sidecar: Sidecar, workflow: string) {
  return async (body: any, options: any = {}) => {
    const { switchyard: opts = {}, ...rest } = body as { switchyard?: SwitchyardOptions } & Record<string, any>;
    const d = await sidecar.route({
      workflow,
      messages: rest.messages ?? [],
      outcomeId: opts.outcomeId,
      taskKind: opts.taskKind,
      attempt: opts.attempt,
      labels: opts.labels,
      deferrable: opts.deferrable,
      maxOutputTokens: rest.max_completion_tokens ?? rest.max_tokens,
    });
    // The provider call runs in a span of its own when the caller traces:
    // Route's sibling, linked to it; its headers carry that span.
    const span = await startModelCall(d);
    const headers = { ...(options.headers ?? {}), ...(await span.headers()) };
    let response: any;
    try {
      response = await span.within(() => create({ ...rest, model: d.providerModel }, { ...options, headers }));
    } catch (e) {
      await report(sidecar, d, undefined, true, span, e);
      throw e;
    }
    if (rest.stream) {
      const wrapped: any = reporting(response, sidecar, d, span);
      wrapped.switchyard = d;
      return wrapped;
    }
    await report(sidecar, d, usageOf(response), false, span);
    response.switchyard = d;
    return response;
  };
}

/** `client` with `chat.completions.create` routed by `sidecar` for `workflow`. */
export function routed<T extends object>(client: T, sidecar: Sidecar, opts: { workflow: string }): T {
  const completions = (client as any).chat.completions;
  const create = routedCreate(completions.create.bind(completions), sidecar, opts.workflow);
  const wrappedCompletions = new Proxy(completions, {
    get: (target, key, receiver) => (key === "create" ? create : Reflect.get(target, key, receiver)),
  });
  const chat = new Proxy((client as any).chat, {
    get: (target, key, receiver) => (key === "completions" ? wrappedCompletions : Reflect.get(target, key, receiver)),
  });
  return new Proxy(client, {
    get: (target, key, receiver) => (key === "chat" ? chat : Reflect.get(target, key, receiver)),
  });
}
