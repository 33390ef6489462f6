//! Public mode, the agent's side, in one test binary:
//! - here, `serve-guard token show|rotate|prune` as a user runs it: the real binary, a config in
//!   a temporary directory, no agent running (the running-agent reload is covered by the
//!   public-mode e2e test);
//! - `token_file`: the token file and the agent's token source in front of the proxy (the
//!   proxy's harness, `serve_guard_proxy::test_util`);
//! - `status`: the public part of `status`.

mod status;
mod token_file;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> String {
    std::env::var("SERVE_GUARD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_serve-guard").to_owned())
}

fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("SERVE_GUARD_CONFIG")
        .output()
        .expect("the serve-guard binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn show_rotate_and_prune_without_an_agent() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("sg-token-cli-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let token_file = dir.path().join("token");
    let config = dir.path().join("serve-guard.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"public\"\ninterfaces = [\"lo\"]\ncontrol_socket = \"{}\"\n\n[public]\ntoken_file = \"{}\"\n",
            dir.path().join("control.sock").display(),
            token_file.display()
        ),
    )
    .unwrap();

    let out = run(&config, &["token", "show"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no token yet"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&config, &["token", "rotate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = text(&out.stdout).trim().to_owned();
    assert_eq!(first.len(), 43);
    assert!(
        text(&out.stderr).contains("no agent is running"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains(&first));
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), first);

    let out = run(&config, &["token", "show"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), first);

    // Rotate puts the new token first and keeps the previous one until prune.
    let out = run(&config, &["token", "rotate"]);
    assert!(out.status.success());
    let second = text(&out.stdout).trim().to_owned();
    assert_ne!(second, first);
    assert!(
        text(&out.stderr).contains("token prune"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        format!("{second}\n{first}\n")
    );
    assert_eq!(
        text(&run(&config, &["token", "show"]).stdout).trim(),
        second
    );
    assert_eq!(
        text(&run(&config, &["token", "show", "--all"]).stdout),
        format!("{second}\n{first}\n")
    );
    let out = run(&config, &["token", "prune"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        format!("{second}\n")
    );

    // A file managed elsewhere (read-only) is left alone, with an error that says so.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o440)).unwrap();
    let out = run(&config, &["token", "rotate"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("managed elsewhere"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        format!("{second}\n")
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&config, &["token", "show"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("chmod 600") && err.contains("defaultMode"),
        "{err}"
    );
    assert!(!err.contains(&second) && out.stdout.is_empty());

    // A bad [public] value is a clear error naming it.
    std::fs::write(
        &config,
        "mode = \"public\"\ninterfaces = [\"lo\"]\n[public]\ncookie_max_age = \"soon\"\n",
    )
    .unwrap();
    let out = run(&config, &["token", "show"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cookie_max_age"),
        "{}",
        text(&out.stderr)
    );
}
