//! Starts the real `switchyard` binary on free ports and connects real tonic
//! clients to it. The server is killed when the handle drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A loopback port that was free a moment ago (`redis.rs`, which benches
/// and unit tests include on its own, keeps a copy).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub struct Server {
    child: Child,
    pub grpc: String,
    pub admin: String,
    pub state: tempfile::TempDir,
    stderr_log: PathBuf,
}

impl Server {
    /// Starts `switchyard serve` on port 0 with `rules` and extra flags, and
    /// waits for its "listening" line.
    pub fn start(rules: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(rules, extra, &[])
    }

    /// `start`, with extra environment variables for the server.
    pub fn start_with_env(rules: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_bin(BIN, rules, extra, env)
    }

    /// `start_with_env` for another build of `switchyard` (benches compare two).
    pub fn start_bin(bin: &str, rules: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let state = tempfile::tempdir().expect("state dir");
        let stderr_log = state.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--rules")
            .arg(rules)
            .args(default_unless(extra, "--listen", "127.0.0.1:0"))
            .args(default_unless(extra, "--admin-listen", "127.0.0.1:0"))
            .args(own_state_dir(extra, state.path()))
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start switchyard");
        let rx = first_line(child.stdout.take().expect("stdout"));
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            let _ = child.kill();
            panic!("switchyard did not report its ports within 30 s; stderr:\n{log}")
        });
        let grpc = field(&line, "grpc=").to_string();
        let admin = field(&line, "admin=").to_string();
        Server {
            child,
            grpc,
            admin,
            state,
            stderr_log,
        }
    }

    pub async fn client(&self) -> RouterClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to switchyard");
        RouterClient::new(ch).max_encoding_message_size(64 * 1024 * 1024)
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the server process has used so far (user + system), from
    /// /proc; zero where /proc is not available.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let hz = 100; // USER_HZ on Linux
        Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// GET a path on the admin port; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    /// The value of response header `name` (lower case) for a GET of `path`.
    pub fn admin_header(&self, path: &str, name: &str) -> String {
        let (_, head, _) = http_get_with_head(&self.admin, path);
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }

    /// GETs `path` until its body satisfies `ok` or `within` passes; returns
    /// the last body. For what the server computes off the request path,
    /// such as the gauges it reads from the store every few seconds.
    pub fn admin_get_until(&self, path: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = http_get(&self.admin, path);
            if ok(&body) || Instant::now() >= deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, waits, and returns the exit status and what it logged.
    pub fn terminate_keeping_log(mut self) -> (std::process::ExitStatus, String) {
        let status = self.stop();
        (status, self.stderr())
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.stop()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flag value`, unless the test passes the flag itself.
fn default_unless(extra: &[&str], flag: &str, value: &str) -> Vec<String> {
    if extra.contains(&flag) {
        Vec::new()
    } else {
        vec![flag.to_string(), value.to_string()]
    }
}

/// `--state-dir` for a fresh temporary folder, unless the test passes its own.
fn own_state_dir(extra: &[&str], dir: &Path) -> Vec<std::ffi::OsString> {
    if extra.contains(&"--state-dir") {
        Vec::new()
    } else {
        vec!["--state-dir".into(), dir.as_os_str().to_owned()]
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("`{key}` in `{line}`")) + key.len();
    line[start..].split_whitespace().next().expect("value")
}

/// A minimal HTTP/1.1 GET, enough for the admin port.
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with_head(base, path);
    (status, body)
}

/// A GET's status, response head (status line and headers) and body.
pub fn http_get_with_head(base: &str, path: &str) -> (u16, String, String) {
    http_request(base, &format!("GET {path} HTTP/1.1"), "Connection: close\r\n")
}

/// A GET over HTTP/1.0 (never a chunked body) with an `Accept` header:
/// status and body.
pub fn http_get_accepting(base: &str, path: &str, accept: &str) -> (u16, String) {
    let (status, _, body) = http_request(base, &format!("GET {path} HTTP/1.0"), &format!("Accept: {accept}\r\n"));
    (status, body)
}

/// One request line and its extra headers (each ending in CRLF), read to
/// the connection's close: status, head and body.
fn http_request(base: &str, request_line: &str, headers: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "{request_line}\r\nHost: {host}\r\n{headers}\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (status, head.to_string(), body.to_string())
}

pub fn message(role: &str, content: &str) -> pb::Message {
    pb::Message {
        role: role.into(),
        content: content.into(),
    }
}

pub fn request(workflow: &str, text: &str) -> pb::RouteRequest {
    pb::RouteRequest {
        workflow: workflow.into(),
        outcome_id: "ticket-1".into(),
        messages: vec![message("user", text)],
        attempt: 1,
        ..Default::default()
    }
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A folder holding `rules.toml` with `text`.
pub fn rules_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("rules.toml"), text).expect("write rules");
    dir
}

/// One `[[keys]]` entry of an API keys file: the key's SHA-256, never the key.
pub fn key_entry(identity: &str, key: &str, roles: &str) -> String {
    format!(
        "[[keys]]\nidentity = \"{identity}\"\nsha256 = \"{}\"\nroles = [{roles}]\n\n",
        switchyard::grpc::auth::sha256_hex(key.as_bytes())
    )
}

/// `keys.toml` in `dir`: callers agent-a (key-a) and agent-b (key-b), and an
/// admin ops (key-ops), then `extra`.
pub fn keys_file(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("keys.toml");
    let text = format!(
        "{}{}{}{extra}",
        key_entry("agent-a", "key-a", "\"caller\""),
        key_entry("agent-b", "key-b", "\"caller\""),
        key_entry("ops", "key-ops", "\"admin\"")
    );
    std::fs::write(&p, text).expect("keys file");
    p
}

/// `msg` with `authorization: Bearer <key>`.
pub fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().expect("header"));
    req
}

/// `switchyard audit --format json` over `state`, with filter flags.
pub fn audit(state: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["audit", "--format", "json", "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .expect("run audit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// The value of one series (name and labels, as written) on an admin
/// port's /metrics; 0 when the series is not there yet.
pub fn metric_at(admin: &str, series: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub const HARD_PROMPT: &str = "Design a lock-free multi-producer queue in Rust and explain why it is linearizable. \
First, derive the invariants; then prove each step, and finally compare it with a mutex-based queue. You must \
handle the ABA problem exactly, never allocate on the hot path, and only use std atomics. Return JSON with the \
schema {\"design\": string, \"proof\": [string]}. Why does a compare-and-swap loop terminate? Analyze the tradeoffs.\n\
1. fn push(&self, v: T)\n2. fn pop(&self) -> Option<T>\n3. fn len(&self) -> usize\n\
```rust\nimpl<T> Queue<T> { pub fn new() -> Self { todo!() } }\n```";

/// A child's first line of output, sent when it comes; the rest is drained
/// so that the child never blocks on a full pipe.
pub fn first_line(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx
}

/// The usage report of a routed call: the routed model, its estimated
/// input (nothing cached or written to a cache), and `output` tokens.
pub fn usage_for(r: &pb::RouteResponse, output: u64) -> pb::UsageReport {
    pb::UsageReport {
        decision_id: r.decision_id.clone(),
        model: r.model.clone(),
        input_tokens: r.input_tokens,
        output_tokens: output,
        ..Default::default()
    }
}

/// `serve` with `rules` and its state in `dir`, set to listen on a port the
/// returned listener holds: a serve that binds before it has read its
/// configuration fails on the taken port, and no parallel test can take
/// the port in between. For tests of what `serve` refuses before binding.
pub fn serve_on_a_held_port(rules: &Path, dir: &Path) -> (std::net::TcpListener, Command) {
    let held = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("hold a port");
    let port = held.local_addr().expect("held port").port();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--rules")
        .arg(rules)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir);
    (held, cmd)
}

/// Awaits tasks that each count two things, and sums each count.
pub async fn sum_pairs<A, B>(tasks: Vec<tokio::task::JoinHandle<(A, B)>>) -> (A, B)
where
    A: std::ops::AddAssign + Default,
    B: std::ops::AddAssign + Default,
{
    let (mut a, mut b) = (A::default(), B::default());
    for t in tasks {
        let (x, y) = t.await.expect("task");
        a += x;
        b += y;
    }
    (a, b)
}

/// A workflow's budget as the server's store holds it.
pub async fn budget(c: &mut RouterClient<Channel>, workflow: &str) -> pb::BudgetStatus {
    c.get_budget(pb::GetBudgetRequest {
        workflow: workflow.into(),
    })
    .await
    .expect("get budget")
    .into_inner()
}
