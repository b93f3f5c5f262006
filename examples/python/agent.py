#!/usr/bin/env python3
"""An agent loop that uses Switchyard the way a production agent would,
through the switchyard-client package (clients/python).

For each task it asks Switchyard which model to call (route), "calls" that
model (simulated here: no provider key needed), reports what the call used
(report_usage), says whether the answer was accepted (feedback; a rejected
first attempt is retried, and Switchyard sends the retry one tier up), and
finally records the task's business outcome (outcome).

    python3 -m venv .venv && .venv/bin/pip install ./clients/python
    .venv/bin/python examples/python/agent.py --target 127.0.0.1:50051

With a real provider, wrap its client instead (switchyard_client.openai.routed
or switchyard_client.anthropic.routed) and usage is reported for you.
Exit status 0 when every call succeeded; 1 otherwise, with the gRPC status.
"""

import argparse
import os
import random
import sys
import uuid

from switchyard_client import Denied, EscalationRequired, Sidecar, SwitchyardError

TASKS = [
    ("chat", "Write a friendly two-line reply thanking a customer for their order."),
    ("summarize", "Summarize this incident in one sentence: the cache node restarted and p99 rose for four minutes."),
    ("code", "Write a Rust function that parses an ISO 8601 date and explain why it rejects 2026-02-30."),
    ("reasoning", "A train leaves at 9:10 and arrives at 11:45. Prove the trip takes 155 minutes, step by step."),
    ("extraction", "Extract the invoice number and total as JSON: Invoice INV-2231, total due 1,240.50 EUR."),
]

SYSTEM = "You are a careful assistant."


def simulate_call(rng, prompt, attempt):
    """Stands in for the provider call: tokens used, and whether it was good."""
    input_tokens = 20 + (len(SYSTEM) + len(prompt)) // 4
    output_tokens = rng.randint(40, 400)
    # A retry goes one tier up, where answers are accepted more often.
    accepted = rng.random() < (0.75 if attempt == 1 else 0.95)
    return input_tokens, output_tokens, accepted


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051", help="Switchyard's gRPC address")
    ap.add_argument("--workflow", default="general")
    ap.add_argument("--tasks", type=int, default=len(TASKS))
    ap.add_argument("--api-key", default=os.environ.get("SWITCHYARD_API_KEY"), help="sent as authorization: Bearer <key>")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    sidecar = Sidecar(args.target, api_key=args.api_key, timeout=10)
    spent = 0
    accepted_outcomes = 0
    try:
        for i in range(args.tasks):
            kind, prompt = TASKS[i % len(TASKS)]
            outcome_id = f"task-{uuid.uuid4()}"
            ok = False
            for attempt in (1, 2):
                messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
                try:
                    d = sidecar.route(args.workflow, messages, outcome_id=outcome_id, task_kind=kind,
                                      attempt=attempt, labels={"team": "examples"})
                except (EscalationRequired, Denied) as e:
                    print(f"{outcome_id}: not routed ({type(e).__name__}): {e.message}")
                    break
                input_tokens, output_tokens, ok = simulate_call(rng, prompt, attempt)
                cost = sidecar.report_usage(d, input_tokens=input_tokens, output_tokens=output_tokens)
                spent += cost
                sidecar.feedback(d, accepted=ok)
                print(f"{outcome_id} attempt {attempt}: {kind:<10} -> {d.model} ({d.provider_model}), "
                      f"${cost / 1e9:.6f}, {'accepted' if ok else 'rejected'}")
                if ok:
                    break
            sidecar.outcome(outcome_id, args.workflow, "accepted" if ok else "rejected", value_usd=2.0 if ok else 0.0)
            accepted_outcomes += int(ok)
    except SwitchyardError as e:
        print(f"switchyard answered {e.code.name}: {e.message}", file=sys.stderr)
        return 1
    print(
        f"{args.tasks} tasks, {accepted_outcomes} accepted, spent ${spent / 1e9:.6f}"
        + (f", ${spent / 1e9 / accepted_outcomes:.6f} per accepted outcome" if accepted_outcomes else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
