// @switchyard/client against the real `switchyard serve` and an HTTP
// stand-in that speaks the OpenAI API: the wrapped `openai` client calls the
// provider with the routed model, and the sidecar's report and budget show
// exactly the cost of the usage the stand-in returned.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import OpenAI from "openai";

import { Sidecar, routed, EscalationRequired, Denied, SwitchyardError } from "../dist/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const bin =
  process.env.SWITCHYARD_BIN ??
  join(process.env.CARGO_TARGET_DIR ?? join(here, "..", "..", "..", "target"), "debug", "switchyard");

const RULES = `
[[models]]
name = "small"
provider = "openai"
api_model = "small-2026-01-01"
input_per_mtok = 2.0
cached_input_per_mtok = 0.5
output_per_mtok = 8.0
context_window = 100000
max_output_tokens = 4000
tiers = { general = 2 }

[[workflows]]
name = "support"
learning = { enabled = false }
budget = { limit_usd = 100.0, period = "day" }

[[workflows]]
name = "tight-escalate"
learning = { enabled = false }
budget = { limit_usd = 0.000000001, period = "day", on_limit = "escalate" }

[[workflows]]
name = "tight-deny"
learning = { enabled = false }
budget = { limit_usd = 0.000000001, period = "day", on_limit = "deny" }
`;

/** Nano-USD for tokens at a price per million, rounded up as the sidecar does. */
const nanos = (tokens, usdPerMtok) => Math.ceil((tokens * Math.round(usdPerMtok * 1e9)) / 1e6);
// 1,200 input tokens of which 1,024 cached, and 80 output, on the small model.
const CALL = nanos(1200 - 1024, 2.0) + nanos(1024, 0.5) + nanos(80, 8.0);
const USAGE = { prompt_tokens: 1200, completion_tokens: 80, total_tokens: 1280, prompt_tokens_details: { cached_tokens: 1024 } };

let dir, server, target, provider, providerUrl;
const seen = [];
let failNext = false;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "switchyard-ts-"));
  writeFileSync(join(dir, "rules.toml"), RULES);
  server = spawn(
    bin,
    ["serve", "--rules", join(dir, "rules.toml"), "--state-dir", join(dir, "state"), "--listen", "127.0.0.1:0",
     "--admin-listen", "127.0.0.1:0", "--shutdown-grace-s", "1"],
    // Spans on, to an address nobody answers: Route hands back a traceparent.
    { stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:9", OTEL_TRACES_SAMPLER: "always_on" } },
  );
  target = await new Promise((resolve, reject) => {
    let out = "";
    server.stdout.on("data", (b) => {
      out += b;
      const m = /grpc=(\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    server.on("exit", (code) => reject(new Error(`switchyard exited ${code}: ${out}`)));
  });
  provider = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const json = JSON.parse(body || "{}");
      seen.push({ path: req.url, body: json, headers: req.headers });
      const send = (code, obj, type = "application/json") => {
        res.writeHead(code, { "content-type": type });
        res.end(typeof obj === "string" ? obj : JSON.stringify(obj));
      };
      if (failNext) {
        failNext = false;
        return send(500, { error: { message: "the stand-in failed on purpose", type: "server_error" } });
      }
      const base = { id: "chatcmpl-1", created: Math.floor(Date.now() / 1000), model: json.model };
      const message = { role: "assistant", content: "Your order ships tomorrow." };
      if (!json.stream) {
        return send(200, { ...base, object: "chat.completion", usage: USAGE, choices: [{ index: 0, message, finish_reason: "stop" }] });
      }
      const chunks = [
        { ...base, object: "chat.completion.chunk", choices: [{ index: 0, delta: { role: "assistant", content: "Your order " }, finish_reason: null }] },
        { ...base, object: "chat.completion.chunk", choices: [{ index: 0, delta: { content: "ships tomorrow." }, finish_reason: "stop" }] },
      ];
      if (json.stream_options?.include_usage) chunks.push({ ...base, object: "chat.completion.chunk", choices: [], usage: USAGE });
      send(200, chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") + "data: [DONE]\n\n", "text/event-stream");
    });
  });
  await new Promise((r) => provider.listen(0, "127.0.0.1", r));
  providerUrl = `http://127.0.0.1:${provider.address().port}/v1`;
});

after(() => {
  server?.kill("SIGTERM");
  provider?.close();
  rmSync(dir, { recursive: true, force: true });
});

function report(workflow) {
  const out = execFileSync(bin, ["report", "--rules", join(dir, "rules.toml"), "--state-dir", join(dir, "state"),
    "--workflow", workflow, "--format", "json"], { encoding: "utf8" });
  return JSON.parse(out).workflows.find((w) => w.workflow === workflow);
}

const openai = () => new OpenAI({ baseURL: providerUrl, apiKey: "k", maxRetries: 0 });
const outcome = () => `ticket-${randomUUID().slice(0, 8)}`;

test("three lines route an OpenAI call, and the report and budget show its exact cost", async () => {
  const sidecar = new Sidecar({ target });
  const budgetBefore = await sidecar.budget("support");
  const spentBefore = report("support")?.spend_nanousd ?? 0;
  const client = routed(openai(), sidecar, { workflow: "support" });
  const reply = await client.chat.completions.create({
    model: "anything",
    messages: [{ role: "user", content: "Where is my order?" }],
    switchyard: { outcomeId: outcome(), taskKind: "chat" },
  });
  assert.equal(reply.choices[0].message.content, "Your order ships tomorrow.");
  assert.equal(reply.switchyard.model, "small");
  assert.equal(reply.switchyard.providerModel, "small-2026-01-01");
  const last = seen.at(-1);
  assert.equal(last.body.model, "small-2026-01-01", "the provider is called with the routed model's ID");
  assert.equal(last.body.switchyard, undefined, "the extra field is stripped");
  assert.equal(last.headers.traceparent, reply.switchyard.traceparent);
  assert.match(reply.switchyard.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
  assert.equal(report("support").spend_nanousd - spentBefore, CALL);
  const budget = await sidecar.budget("support");
  assert.equal(budget.spentNanousd - budgetBefore.spentNanousd, CALL);
  assert.equal(budget.reservedNanousd, 0);
  sidecar.close();
});

test("a stream reports its usage at the end", async () => {
  const sidecar = new Sidecar({ target });
  const before = report("support").spend_nanousd;
  const client = routed(openai(), sidecar, { workflow: "support" });
  const stream = await client.chat.completions.create({
    model: "x",
    messages: [{ role: "user", content: "Where is my order?" }],
    stream: true,
    stream_options: { include_usage: true },
    switchyard: { outcomeId: outcome() },
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, "Your order ships tomorrow.");
  assert.equal(stream.switchyard.providerModel, "small-2026-01-01");
  assert.equal(report("support").spend_nanousd - before, CALL);
  sidecar.close();
});

test("a failing provider call is reported failed and rethrown", async () => {
  const sidecar = new Sidecar({ target });
  const before = report("support").failed_calls;
  const client = routed(openai(), sidecar, { workflow: "support" });
  failNext = true;
  await assert.rejects(
    client.chat.completions.create({ model: "x", messages: [{ role: "user", content: "hi" }], switchyard: { outcomeId: outcome() } }),
    (e) => e instanceof OpenAI.InternalServerError,
  );
  assert.equal(report("support").failed_calls, before + 1);
  sidecar.close();
});

test("budgets reject with escalation and denial; other refusals say what to fix", async () => {
  const sidecar = new Sidecar({ target });
  const messages = [{ role: "user", content: "hello" }];
  await assert.rejects(sidecar.route({ workflow: "tight-escalate", messages, outcomeId: outcome() }), (e) => {
    assert.ok(e instanceof EscalationRequired && e.escalationId.length > 0, String(e));
    return true;
  });
  await assert.rejects(sidecar.route({ workflow: "tight-deny", messages, outcomeId: outcome() }), (e) => e instanceof Denied);
  await assert.rejects(sidecar.route({ workflow: "no-such-workflow", messages }), (e) => {
    assert.ok(e instanceof SwitchyardError && e.message.includes("no-such-workflow"), String(e));
    return true;
  });
  await assert.rejects(sidecar.outcome("o", "support", "maybe"), TypeError);
  sidecar.close();
});

test("usage, feedback and outcomes without a wrapper", async () => {
  const sidecar = new Sidecar({ target });
  const oid = outcome();
  // The Python client's order of arguments…
  const d = await sidecar.route("support", [{ role: "user", content: [{ type: "text", text: "Refund order 77" }] }], { outcomeId: oid });
  const cost = await sidecar.reportUsage(d, 100, 10);
  assert.equal(cost, nanos(100, 2.0) + nanos(10, 8.0));
  // …or one object each.
  const again = await sidecar.route({ workflow: "support", messages: [{ role: "user", content: "And order 78" }], outcomeId: oid, attempt: 2 });
  assert.equal(await sidecar.reportUsage(again, { inputTokens: 100, outputTokens: 10, cachedInputTokens: 100 }), nanos(100, 0.5) + nanos(10, 8.0));
  await sidecar.feedback(d, true);
  const before = report("support").accepted_outcomes;
  await sidecar.outcome(oid, "support", "accepted", { valueUsd: 12.5 });
  assert.equal(report("support").accepted_outcomes, before + 1);
  sidecar.close();
});

// Last: it registers a tracer provider for the rest of the process.
test("with the OpenTelemetry SDK, Route joins the agent's span and the model call is its linked sibling with the cost", async () => {
  const { trace, SpanKind } = await import("@opentelemetry/api");
  const { NodeTracerProvider, SimpleSpanProcessor, InMemorySpanExporter } = await import("@opentelemetry/sdk-trace-node");
  const exporter = new InMemorySpanExporter();
  new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).register();
  const sidecar = new Sidecar({ target });
  const client = routed(openai(), sidecar, { workflow: "support" });
  const tracer = trace.getTracer("agent");
  let agentCtx;
  const reply = await tracer.startActiveSpan("handle ticket", async (agent) => {
    agentCtx = agent.spanContext();
    try {
      return await client.chat.completions.create({
        model: "anything",
        messages: [{ role: "user", content: "Where is my order?" }],
        switchyard: { outcomeId: outcome() },
      });
    } finally {
      agent.end();
    }
  });
  const d = reply.switchyard;
  const [, routeTrace, routeSpan] = d.traceparent.split("-");
  assert.equal(routeTrace, agentCtx.traceId, "Route is in the agent's trace");
  assert.notEqual(routeSpan, agentCtx.spanId);
  const call = exporter.getFinishedSpans().find((s) => s.name === "chat small-2026-01-01");
  assert.ok(call, exporter.getFinishedSpans().map((s) => s.name).join(", "));
  assert.equal(call.kind, SpanKind.CLIENT);
  assert.equal(call.parentSpanContext?.spanId ?? call.parentSpanId, agentCtx.spanId, "Route's sibling, not its child");
  assert.deepEqual(call.links.map((l) => l.context.spanId), [routeSpan], "linked to Route");
  const a = call.attributes;
  assert.equal(a["switchyard.decision.id"], d.decisionId);
  assert.equal(a["gen_ai.operation.name"], "chat");
  assert.equal(a["gen_ai.provider.name"], "openai");
  assert.equal(a["gen_ai.request.model"], "small-2026-01-01");
  assert.deepEqual([a["gen_ai.usage.input_tokens"], a["gen_ai.usage.cache_read.input_tokens"], a["gen_ai.usage.output_tokens"]], [1200, 1024, 80]);
  assert.ok(Math.abs(a["gen_ai.usage.cost.amount"] - CALL / 1e9) < 1e-15);
  assert.equal(a["gen_ai.usage.cost.currency"], "USD");
  assert.equal(a["gen_ai.usage.cost.source"], "switchyard");
  // The provider is called inside the model-call span, not under Route.
  assert.ok(
    seen.at(-1).headers.traceparent.startsWith(`00-${call.spanContext().traceId}-${call.spanContext().spanId}-`),
    seen.at(-1).headers.traceparent,
  );
  sidecar.close();
});
