//! Starts a real `redis-server` on a free loopback port for a test, with its
//! data in a temporary folder (append-only file, fsync on every write, so a
//! kill -9 and restart keeps every write the server acknowledged).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` options, which override the defaults
    /// (for example `--appendfsync everysec`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("redis dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port found free can be taken before redis binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                server.init_store();
                return server;
            }
        }
        panic!("redis-server did not start; see {}", server.log().display())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Marks the new Redis as the deployment's budget store, as an operator
    /// does once (`switchyard budget init`): sidecars refuse an empty Redis.
    /// A cluster node is left alone (the cluster is marked once it is up).
    pub fn init_store(&self) {
        if self.extra.iter().any(|e| e == "--cluster-enabled") {
            return;
        }
        mark_store(&["-p", &self.port.to_string()]);
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it (`apt-get install redis-server`; .ci/run does this)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                // It exited: most often another process took the port first.
                return false;
            }
            // Something listens there; it is this redis-server, and not
            // another test's listener that took the port, when its
            // process_id is this child's.
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.is_this_child() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the server answering on the port is this child: its
    /// `process_id` is the child's.
    fn is_this_child(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return false;
        };
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "server"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
            })
    }

    /// Sends a signal by name (`STOP` freezes it without closing its
    /// connections, as a hung host would; `CONT` thaws it).
    #[allow(dead_code)]
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {pid}");
    }

    /// kill -9: no shutdown, no final save.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data folder.
    pub fn restart(&mut self) {
        self.kill9();
        assert!(
            self.spawn(),
            "redis-server did not restart; see {}",
            self.log().display()
        );
    }
}

/// Writes the store record `switchyard budget init` writes (prefix `sy`).
fn mark_store(args: &[&str]) {
    let out = Command::new("redis-cli")
        .args(args)
        .args(["SET", "sy:store", "initialised by the test", "NX"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli SET sy:store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real Redis Cluster on loopback: three primaries (`--cluster-enabled
/// yes`) joined by `redis-cli --cluster create`, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("dir");
                let conf = dir.path().join("nodes.conf");
                let node = RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().expect("utf-8 path"),
                    "--cluster-node-timeout",
                    "5000",
                ]);
                // The node keeps its own config file under its own folder.
                std::mem::forget(dir);
                node
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); it comes with redis-server (apt-get install redis-server)")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must agree the cluster is up before it serves.
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in &addrs {
            let port = a.rsplit(':').next().expect("port");
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", port, "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up at {a}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let cluster = RedisCluster { nodes };
        mark_store(&["-c", "-p", &cluster.nodes[0].port.to_string()]);
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}
