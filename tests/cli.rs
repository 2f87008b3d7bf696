//! The `engine` binary: help, version, `info`, and a clear error on bad options.

use std::process::Command;

fn engine(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .output()
        .expect("the engine binary runs")
}

#[test]
fn no_arguments_prints_help_and_succeeds() {
    let out = engine(&[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Usage: engine"), "{stdout}");
    assert!(stdout.contains("--log-level"), "{stdout}");
    // Logs go to standard error, without colour codes when it is not a terminal.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn info_lists_versions_and_features() {
    let out = engine(&["info"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(concat!("engine ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "protocol version {}",
            engine::core::protocol::PROTOCOL_VERSION
        )),
        "{stdout}"
    );
    let features = engine::enabled_features().join(", ");
    assert!(
        stdout.contains(&format!("features: {features}")),
        "{stdout}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let out = engine(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("engine ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_log_level_is_a_clear_error() {
    let out = engine(&["--log-level", "engine=[", "info"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --log-level"), "{stderr}");
}

#[test]
fn an_unknown_subcommand_is_rejected() {
    let out = engine(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
