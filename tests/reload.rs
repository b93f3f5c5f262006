//! Hot reload through the real server: rename-over writes, Kubernetes
//! ConfigMap symlink swaps, and broken files that keep the last good table.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tonic::Code;

fn shipped() -> String {
    std::fs::read_to_string(repo_path("routing-rules/default.toml")).expect("default rules")
}

fn with_workflow(name: &str) -> String {
    format!("{}\n[[workflows]]\nname = \"{name}\"\n", shipped())
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename over");
}

#[tokio::test]
async fn rename_over_write_takes_effect_without_dropping_requests() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, shipped()).expect("write");
    let server = Server::start(&rules, &[]);
    let client = server.client().await;

    // Route continuously while the file changes under the server.
    let errors = Arc::new(AtomicU64::new(0));
    let routed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (mut c, errors, routed, stop) = (client.clone(), errors.clone(), routed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.route(request("general", "keep routing")).await {
                    Ok(_) => routed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let mut c = client.clone();
    let err = c.route(request("triage", "hi")).await.expect_err("not there yet");
    assert_eq!(err.code(), Code::NotFound);

    let started = std::time::Instant::now();
    rename_over(&rules, &with_workflow("triage"));
    let appeared = eventually(Duration::from_secs(2), || {
        let mut c = client.clone();
        async move { c.route(request("triage", "hi")).await.is_ok() }
    })
    .await;
    assert!(appeared, "the new workflow was not routable within 2 s");
    eprintln!("rename-over reload visible after {:?}", started.elapsed());

    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "requests failed during reload");
    assert!(routed.load(Ordering::Relaxed) > 10);
}

#[tokio::test]
async fn broken_file_keeps_the_last_good_table_and_shows_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, shipped()).expect("write");
    let server = Server::start(&rules, &[]);
    let mut client = server.client().await;

    rename_over(
        &rules,
        &format!("{}\n[[workflows]]\nname = \"x\"\nquality_floor = 99\n", shipped()),
    );
    let shown = eventually(Duration::from_secs(3), || async {
        server.admin_get("/healthz").1.contains("\"reload_failing\":true")
    })
    .await;
    assert!(shown, "the failure is not visible on /healthz");
    let (_, health) = server.admin_get("/healthz");
    assert!(health.contains("quality_floor"), "the error names the key: {health}");
    assert!(health.contains("rules.toml:"), "the error names the file: {health}");
    let (_, metrics) = server.admin_get("/metrics");
    assert!(metrics.contains("switchyard_rules_reload_failing 1"), "{metrics}");
    assert!(server.stderr().contains("rules reload FAILED"), "logged loudly");

    // Still serving with the last good table.
    client
        .route(request("general", "hi"))
        .await
        .expect("routes with the last good rules");

    // Fixing the file clears the failure.
    rename_over(&rules, &with_workflow("fixed"));
    let fixed = eventually(Duration::from_secs(3), || {
        let mut c = client.clone();
        async move { c.route(request("fixed", "hi")).await.is_ok() }
    })
    .await;
    assert!(fixed);
    assert!(server
        .admin_get("/metrics")
        .1
        .contains("switchyard_rules_reload_failing 0"));
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_takes_effect() {
    use std::os::unix::fs::symlink;
    // The layout the kubelet writes for a ConfigMap volume:
    //   rules/..2026_v1/default.toml
    //   rules/..data -> ..2026_v1
    //   rules/default.toml -> ..data/default.toml
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("rules");
    std::fs::create_dir_all(root.join("..2026_v1")).expect("mkdir");
    std::fs::write(root.join("..2026_v1/default.toml"), shipped()).expect("write");
    symlink("..2026_v1", root.join("..data")).expect("symlink data");
    symlink("..data/default.toml", root.join("default.toml")).expect("symlink file");

    let server = Server::start(&root, &[]);
    let client = server.client().await;

    // The kubelet's update: write a new timestamped folder, point a temporary
    // symlink at it, and rename that over `..data`.
    std::fs::create_dir_all(root.join("..2026_v2")).expect("mkdir");
    std::fs::write(root.join("..2026_v2/default.toml"), with_workflow("swapped")).expect("write");
    symlink("..2026_v2", root.join("..data_tmp")).expect("symlink tmp");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..2026_v1")).expect("old version removed");

    let swapped = eventually(Duration::from_secs(2), || {
        let mut c = client.clone();
        async move { c.route(request("swapped", "hi")).await.is_ok() }
    })
    .await;
    assert!(swapped, "the ConfigMap swap was not picked up within 2 s");
}

fn failing(server: &Server) -> bool {
    server.admin_get("/healthz").1.contains("\"reload_failing\":true")
}

/// Defect 7: reverting a broken edit to the last good bytes left
/// `reload_failing` at 1 with the old error, because the files matched the
/// table in use and nothing cleared the status.
#[tokio::test]
async fn reverting_a_broken_edit_clears_the_failure() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, shipped()).expect("write");
    let server = Server::start(&rules, &[]);
    rename_over(
        &rules,
        &format!("{}\n[[workflows]]\nname = \"x\"\nmax_tier = 0\n", shipped()),
    );
    assert!(eventually(Duration::from_secs(3), || async { failing(&server) }).await);
    // The operator reverts: the very bytes of the table in use.
    rename_over(&rules, &shipped());
    let cleared = eventually(Duration::from_secs(3), || async { !failing(&server) }).await;
    assert!(cleared, "still failing: {}", server.admin_get("/healthz").1);
    let (_, health) = server.admin_get("/healthz");
    assert!(health.contains("\"last_error\":null"), "{health}");
    assert!(server
        .admin_get("/metrics")
        .1
        .contains("switchyard_rules_reload_failing 0"));
}

/// Defect 7: a rules file that is not UTF-8, or a folder emptied of rules,
/// was skipped without a word, though `switchyard check` reports both.
#[tokio::test]
async fn a_file_that_is_not_utf8_or_an_emptied_folder_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let folder = dir.path().join("rules");
    std::fs::create_dir(&folder).expect("mkdir");
    let file = folder.join("default.toml");
    std::fs::write(&file, shipped()).expect("write");
    let server = Server::start(&folder, &[]);
    let mut client = server.client().await;

    let mut bytes = shipped().into_bytes();
    bytes.extend_from_slice(b"\n# caf\xe9 latin-1\n");
    std::fs::write(folder.join("extra.toml"), &bytes).expect("write latin-1");
    assert!(
        eventually(Duration::from_secs(3), || async { failing(&server) }).await,
        "a non-UTF-8 file is a failed reload"
    );
    let (_, health) = server.admin_get("/healthz");
    assert!(
        health.contains("extra.toml:") && health.contains("not UTF-8"),
        "{health}"
    );

    std::fs::remove_file(folder.join("extra.toml")).expect("rm");
    assert!(eventually(Duration::from_secs(3), || async { !failing(&server) }).await);

    std::fs::remove_file(&file).expect("empty the folder");
    assert!(
        eventually(Duration::from_secs(3), || async { failing(&server) }).await,
        "an emptied folder is a failed reload"
    );
    let (_, health) = server.admin_get("/healthz");
    assert!(health.contains("no *.toml file"), "{health}");
    client
        .route(request("general", "hi"))
        .await
        .expect("still serving the last good rules");
}
