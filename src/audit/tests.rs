//! The audit log: appended, synced, filtered, rotated, aggregated.

use std::io::Write;
use std::time::Duration;

use super::*;

#[test]
fn records_are_appended_synced_and_filtered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Audit::open(dir.path(), Rotation::default()).expect("open");
    a.record(Record::new(
        "agent-b",
        Action::Route,
        "restricted",
        "",
        Verdict::PermissionDenied,
        "not allowed",
    ));
    a.record(Record::new(
        "ops",
        Action::ResolveEscalation,
        "w",
        "esc-1",
        Verdict::Approved,
        "+$5",
    ));
    a.close();
    // Reopening appends; it never truncates.
    let mut a = Audit::open(dir.path(), Rotation::default()).expect("reopen");
    a.record(Record::new(
        "ops",
        Action::RulesReload,
        "",
        "rules/",
        Verdict::Ok,
        "sha256 ab",
    ));
    a.close();
    let all = read(dir.path(), &Filter::default()).expect("read").0;
    assert_eq!(all.len(), 3);
    let ops = Filter {
        identity: Some("ops".into()),
        ..Filter::default()
    };
    assert_eq!(read(dir.path(), &ops).expect("read").0.len(), 2);
    let denied = Filter {
        result: Some("permission_denied".into()),
        ..Filter::default()
    };
    let d = read(dir.path(), &denied).expect("read").0;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].workflow, "restricted");
    // A torn line (a crash mid-write) is skipped and counted.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(FILE))
        .expect("file");
    f.write_all(b"{\"at\": \"2026").expect("write");
    let (all, bad) = read(dir.path(), &Filter::default()).expect("read");
    assert_eq!((all.len(), bad), (3, 1));
    let future = Filter {
        since: Some("2100-01-01T00:00:00Z".parse().expect("ts")),
        ..Filter::default()
    };
    assert!(read(dir.path(), &future).expect("read").0.is_empty());
}

#[test]
fn the_log_rotates_at_its_size_and_keeps_a_bounded_number_of_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rotation = Rotation {
        max_bytes: 4096,
        keep: 2,
    };
    let mut a = Audit::open(dir.path(), rotation).expect("open");
    for i in 0..400 {
        a.record(Record::new(
            "ops",
            Action::RulesReload,
            "",
            &format!("r-{i:04}"),
            Verdict::Ok,
            "sha256 ab",
        ));
        if i % 40 == 39 {
            // Let the writer take each burst as its own batch.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    a.close();
    let names = files(dir.path());
    assert_eq!(
        names
            .iter()
            .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect::<Vec<_>>(),
        ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"],
        "two rotated files are kept"
    );
    for p in &names {
        let len = std::fs::metadata(p).expect("file").len();
        assert!(len <= rotation.max_bytes, "{} is {len} bytes", p.display());
    }
    let (all, bad) = read(dir.path(), &Filter::default()).expect("read");
    assert_eq!(bad, 0);
    let targets: Vec<&str> = all.iter().map(|r| r.target.as_str()).collect();
    assert!(targets.len() < 400, "the oldest were dropped: {}", targets.len());
    assert_eq!(targets.last(), Some(&"r-0399"), "the newest is kept");
    assert!(
        targets.windows(2).all(|w| w[0] < w[1]),
        "read oldest first, across files"
    );
}

#[test]
fn repeated_refusals_become_one_counted_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Audit::open(dir.path(), Rotation::default()).expect("open");
    let peer: std::net::SocketAddr = "10.0.0.7:4000".parse().expect("addr");
    for _ in 0..1000 {
        a.refusal(
            Record::new("-", Action::Route, "", "", Verdict::Unauthenticated, "unknown API key").from_peer(Some(peer)),
        );
    }
    // Another peer is another kind.
    let other: std::net::SocketAddr = "10.0.0.8:4000".parse().expect("addr");
    a.refusal(
        Record::new("-", Action::Route, "", "", Verdict::Unauthenticated, "unknown API key").from_peer(Some(other)),
    );
    a.close();
    let (all, _) = read(dir.path(), &Filter::default()).expect("read");
    let from = |ip: &str| all.iter().filter(|r| r.peer == ip).map(|r| r.count).collect::<Vec<_>>();
    assert_eq!(from("10.0.0.7"), [1, 999], "the first at once, the rest as one record");
    assert_eq!(from("10.0.0.8"), [1]);
    assert_eq!(all.len(), 3);
    let text = std::fs::read_to_string(dir.path().join(FILE)).expect("log");
    assert!(text.contains("\"count\":999") && text.contains("\"since\":"), "{text}");
}
