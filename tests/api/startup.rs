use std::process::Stdio;

use crate::helpers::openbatch_command;

fn run_and_capture(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run openbatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_database_fails_fast_naming_the_setting() {
    let (ok, stderr) = run_and_capture(
        openbatch_command("postgres://postgres:s3cret@127.0.0.1:1/openbatch")
            .env("OPENBATCH__DATABASE__CONNECT_TIMEOUT_SECS", "5")
            .arg("serve"),
    );
    assert!(!ok);
    assert!(stderr.contains("OPENBATCH__DATABASE__URL"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}

#[test]
fn a_bad_setting_fails_fast_naming_it() {
    let (ok, stderr) = run_and_capture(
        openbatch_command("postgres://postgres@127.0.0.1:1/openbatch")
            .env("OPENBATCH__SERVER__PORT", "not-a-port")
            .arg("serve"),
    );
    assert!(!ok);
    assert!(stderr.contains("server.port"), "{stderr}");

    let (ok, stderr) = run_and_capture(openbatch_command("mysql://nope").arg("migrate"));
    assert!(!ok);
    assert!(stderr.contains("OPENBATCH__DATABASE__URL"), "{stderr}");
}

#[test]
fn migrate_creates_and_migrates_a_missing_database_twice_over() {
    let db = crate::helpers::TestDb::new();
    let url = db.url.clone();
    for _ in 0..2 {
        let (ok, stderr) = run_and_capture(openbatch_command(&url).arg("migrate"));
        assert!(ok, "{stderr}");
    }
}
