#!/usr/bin/env python3
"""An agent loop that uses Switchyard the way a production agent would.

For each task it asks Switchyard which model to call (Route), "calls" that
model (simulated here: no provider key needed), reports what the call used
(ReportUsage), says whether the answer was accepted (RecordFeedback; a
rejected first attempt is retried, and Switchyard sends the retry one tier
up), and finally records the task's business outcome (RecordOutcome).

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/agent.py --target 127.0.0.1:50051

The client code is generated from proto/ into a temporary folder at start, so
it always matches the server's contract. Exit status 0 when every call
succeeded; 1 otherwise, with the gRPC status.
"""

import argparse
import importlib
import os
import random
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = "switchyard/v1/router.proto"

TASKS = [
    ("chat", "Write a friendly two-line reply thanking a customer for their order."),
    ("summarize", "Summarize this incident in one sentence: the cache node restarted and p99 rose for four minutes."),
    ("code", "Write a Rust function that parses an ISO 8601 date and explain why it rejects 2026-02-30."),
    ("reasoning", "A train leaves at 9:10 and arrives at 11:45. Prove the trip takes 155 minutes, step by step."),
    ("extraction", "Extract the invoice number and total as JSON: Invoice INV-2231, total due 1,240.50 EUR."),
]


def load_stubs():
    """Generates the Python client for router.proto and imports it."""
    out = tempfile.mkdtemp(prefix="switchyard-py-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    )
    if code != 0:
        sys.exit(f"generating the client from {PROTO_DIR}/{PROTO} failed (protoc exit {code})")
    sys.path.insert(0, out)
    pb = importlib.import_module("switchyard.v1.router_pb2")
    rpc = importlib.import_module("switchyard.v1.router_pb2_grpc")
    return pb, rpc


def simulate_call(rng, response):
    """Stands in for the provider call: tokens used, and whether it was good."""
    input_tokens = response.input_tokens
    output_tokens = max(1, int(response.estimated_output_tokens * rng.uniform(0.3, 1.0)))
    # Stronger tiers are accepted more often.
    accepted = rng.random() < min(0.97, 0.45 + 0.1 * response.required_tier)
    return input_tokens, output_tokens, accepted


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051", help="Switchyard's gRPC address")
    ap.add_argument("--workflow", default="general")
    ap.add_argument("--tasks", type=int, default=len(TASKS))
    ap.add_argument("--api-key", default=os.environ.get("SWITCHYARD_API_KEY"), help="sent as authorization: Bearer <key>")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    pb, rpc = load_stubs()
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []
    rng = random.Random(args.seed)
    channel = grpc.insecure_channel(args.target)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
    except grpc.FutureTimeoutError:
        sys.exit(f"no Switchyard answers at {args.target}; start it with `cargo run --release -- serve`")
    router = rpc.RouterStub(channel)

    spent = 0
    accepted_outcomes = 0
    try:
        for i in range(args.tasks):
            kind, prompt = TASKS[i % len(TASKS)]
            outcome_id = f"task-{uuid.uuid4()}"
            ok = False
            for attempt in (1, 2):
                r = router.Route(
                    pb.RouteRequest(
                        workflow=args.workflow,
                        outcome_id=outcome_id,
                        task_kind=kind,
                        attempt=attempt,
                        messages=[
                            pb.Message(role="system", content="You are a careful assistant."),
                            pb.Message(role="user", content=prompt),
                        ],
                        labels={"team": "examples"},
                    ),
                    metadata=metadata,
                    timeout=5,
                )
                if r.status not in (pb.ROUTE_STATUS_ROUTED, pb.ROUTE_STATUS_DOWNGRADED):
                    print(f"{outcome_id}: not routed ({pb.RouteStatus.Name(r.status)}): {r.reason}")
                    break
                input_tokens, output_tokens, ok = simulate_call(rng, r)
                ack = router.ReportUsage(
                    pb.UsageReport(
                        decision_id=r.decision_id,
                        model=r.model,
                        input_tokens=input_tokens,
                        cached_input_tokens=r.cached_input_tokens,
                        output_tokens=output_tokens,
                    ),
                    metadata=metadata,
                    timeout=5,
                )
                spent += ack.cost_nanousd
                router.RecordFeedback(
                    pb.FeedbackReport(decision_id=r.decision_id, accepted=ok), metadata=metadata, timeout=5
                )
                print(
                    f"{outcome_id} attempt {attempt}: {kind:<10} -> {r.model} (tier {r.required_tier}, rule {r.rule}), "
                    f"${ack.cost_nanousd / 1e9:.6f}, {'accepted' if ok else 'rejected'}"
                )
                if ok:
                    break
            status = pb.OUTCOME_STATUS_ACCEPTED if ok else pb.OUTCOME_STATUS_REJECTED
            router.RecordOutcome(
                pb.OutcomeReport(outcome_id=outcome_id, workflow=args.workflow, status=status, value_usd=2.0 if ok else 0.0),
                metadata=metadata,
                timeout=5,
            )
            accepted_outcomes += int(ok)
    except grpc.RpcError as e:
        print(f"switchyard answered {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(
        f"{args.tasks} tasks, {accepted_outcomes} accepted, spent ${spent / 1e9:.6f}"
        + (f", ${spent / 1e9 / accepted_outcomes:.6f} per accepted outcome" if accepted_outcomes else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
