//! A disk that fills under a running sidecar, for real: the server runs in
//! its own mount namespace (`unshare -m`, as root in CI) with its state
//! folder on a small tmpfs, which the test fills and frees through control
//! files outside it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use switchyard::testing::{model, RulesBuilder};
use tonic::transport::Channel;
use tonic::Code;

fn rules_text() -> String {
    RulesBuilder::new()
        .model(model("m", 1.0, 4.0, 3).cached(0.1))
        .budgeted(
            "budgeted",
            "",
            "limit_usd = 1000.0\nperiod = \"day\"\non_limit = \"deny\"",
        )
        .build()
}

/// The sidecar inside its namespace, and the control folder the test uses.
struct Sidecar {
    child: Child,
    grpc: String,
    admin: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(rules: &Path, state: &Path, ctl: &Path) -> Sidecar {
    let (state, ctl) = (state.display(), ctl.display());
    // Inside the namespace: a 16 MiB tmpfs over the state folder; a helper
    // that fills it when told to (ctl/fill) and frees it when told to
    // (ctl/free); then the server itself.
    let script = format!(
        r#"mount -t tmpfs -o size=16m tmpfs "{state}" || exit 97
( while [ ! -e "{ctl}/fill" ]; do sleep 0.05; done
  dd if=/dev/zero of="{state}/filler" bs=64k 2>/dev/null; touch "{ctl}/full"
  while [ ! -e "{ctl}/free" ]; do sleep 0.05; done
  rm -f "{state}/filler"; touch "{ctl}/freed" ) &
exec "{bin}" serve --rules "{rules}" --state-dir "{state}" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --wal-limit-mib 1
"#,
        bin = BIN,
        rules = rules.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("unshare is part of util-linux, on every Debian machine");
    let rx = first_line(child.stdout.take().expect("stdout"));
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => {
            let status = child.try_wait().ok().flatten();
            panic!(
                "the sidecar did not start in its own mount namespace ({status:?}); this test needs root \
                 (or unprivileged user namespaces) to mount a tmpfs, as CI has"
            )
        }
    };
    let field = |key: &str| -> String {
        let start = line.find(key).expect("field") + key.len();
        line[start..].split_whitespace().next().expect("value").to_string()
    };
    Sidecar {
        grpc: field("grpc="),
        admin: field("admin="),
        child,
    }
}

async fn client(addr: &str) -> RouterClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    RouterClient::new(ch)
}

fn req(i: u64) -> pb::RouteRequest {
    pb::RouteRequest {
        max_output_tokens: 100,
        outcome_id: format!("o-{i}"),
        ..request(
            "budgeted",
            "Summarise the incident report in three bullet points, with owners.",
        )
    }
}

/// One Route and its ReportUsage; the cost if both were acknowledged.
async fn pair(c: &mut RouterClient<Channel>, i: u64) -> Result<i64, tonic::Status> {
    let r = c.route(req(i)).await?.into_inner();
    let ack = c
        .report_usage(pb::UsageReport {
            decision_id: r.decision_id.clone(),
            model: r.model.clone(),
            input_tokens: r.input_tokens,
            cached_input_tokens: 0,
            cache_write_input_tokens: 0,
            output_tokens: 50,
            failed: false,
        })
        .await?;
    Ok(ack.into_inner().cost_nanousd)
}

async fn wait_for(path: &Path) {
    assert!(
        eventually(Duration::from_secs(20), || async { path.exists() }).await,
        "{} did not appear",
        path.display()
    );
}

/// Defect 6: with the embedded store failing (a full disk), `/healthz` said
/// ok, `/readyz` answered 200 and `switchyard_budget_store_unavailable_total`
/// stayed 0. Now readiness drops and the metrics count, and both come back
/// when space does, with every acknowledged cost still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_readiness_off_and_is_counted_until_space_returns() {
    let rules = tempfile::tempdir().expect("rules");
    std::fs::write(rules.path().join("rules.toml"), rules_text()).expect("write");
    let (state, ctl) = (tempfile::tempdir().expect("state"), tempfile::tempdir().expect("ctl"));
    let sidecar = start(rules.path(), state.path(), ctl.path());
    let mut c = client(&sidecar.grpc).await;
    let mut acked = 0i64;
    let mut i = 0u64;
    for _ in 0..50 {
        acked += pair(&mut c, i).await.expect("a healthy store");
        i += 1;
    }
    assert_eq!(http_get(&sidecar.admin, "/readyz").0, 200);

    std::fs::write(ctl.path().join("fill"), b"").expect("fill");
    wait_for(&ctl.path().join("full")).await;
    // Budgeted calls now fail closed: keep trying until the store says so.
    let mut failed = None;
    for _ in 0..20_000 {
        match pair(&mut c, i).await {
            Ok(cost) => acked += cost,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        i += 1;
    }
    let e = failed.expect("a full disk makes the store fail");
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    let (code, body) = http_get(&sidecar.admin, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("budget store"), "{body}");
    let (_, health) = http_get(&sidecar.admin, "/healthz");
    assert!(health.contains("\"status\":\"degraded\""), "{health}");
    assert!(metric_at(&sidecar.admin, "switchyard_budget_store_unavailable_total") > 0);
    assert_eq!(metric_at(&sidecar.admin, "switchyard_budget_store_failing"), 1);

    // Space returns: the store writes again, and readiness follows.
    std::fs::write(ctl.path().join("free"), b"").expect("free");
    wait_for(&ctl.path().join("freed")).await;
    let mut recovered = false;
    for _ in 0..200 {
        if let Ok(cost) = pair(&mut c, i).await {
            acked += cost;
            recovered = true;
            break;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "budgeted calls route again once there is space");
    assert!(
        eventually(Duration::from_secs(5), || async {
            http_get(&sidecar.admin, "/readyz").0 == 200
        })
        .await,
        "ready again"
    );
    assert_eq!(metric_at(&sidecar.admin, "switchyard_budget_store_failing"), 0);
    // Nothing acknowledged was lost on the way.
    let b = c
        .get_budget(pb::GetBudgetRequest {
            workflow: "budgeted".into(),
        })
        .await
        .expect("budget")
        .into_inner();
    assert_eq!(b.spent_nanousd, acked, "spend is every acknowledged cost, each once");
}
