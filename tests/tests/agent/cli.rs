//! The CLI as scripts use it, against a real private-mode agent: a closed pipe ends it quietly,
//! `cidr` changes print a summary (the whole list with `--json`), every `--json` carries
//! `schema_version`, the documented exit codes, `--allow-everyone`, and token verbs that refuse a
//! private-mode config.

use anyhow::{Context as _, Result, ensure};
use serve_guard_tests::agent::{Agent, AgentConfig, agent_bin};
use serve_guard_tests::topology::{IFACE, Topology};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

/// Enough CIDRs that `cidr list` writes far more than a pipe buffer holds.
const MANY: usize = 6000;
const SUMMARY_MAX_BYTES: usize = 1024;

fn config() -> AgentConfig {
    AgentConfig::private(&[IFACE])
        .serve_ports(&[8000])
        .cidrs(&["10.0.0.0/8"])
        .metrics_listen("127.0.0.1:9464")
}

fn many_cidrs() -> String {
    (0..MANY)
        .map(|i| format!("10.{}.{}.0/24\n", i / 256, i % 256))
        .collect()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_cli_behaves_for_scripts() -> Result<()> {
    let topo = Topology::new()?;
    let agent = Agent::start(&topo.server.ns, config())?;

    // A large replace prints a summary, not the list.
    let out = agent.cli_with_stdin(&["cidr", "replace", "-f", "-"], many_cidrs().as_bytes())?;
    ensure!(code(&out) == Some(0), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    ensure!(
        summary.len() < SUMMARY_MAX_BYTES
            && summary.contains(&format!("{MANY} IPv4"))
            && summary.contains(&format!("and {} more", MANY - 5)),
        "{summary}"
    );

    // `cidr list | head -1`: quiet, successful exit once the reader is gone.
    let mut child = Command::new(agent_bin()?)
        .args(["cidr", "list", "-c"])
        .arg(&agent.files().config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
    // The reader (and with it the pipe) is dropped here.
    let out = child.wait_with_output()?;
    ensure!(first.starts_with("revision "), "{first}");
    ensure!(
        out.status.success() && out.stderr.is_empty(),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );

    // --json everywhere, with a schema version; a change's JSON lists every entry.
    let out = agent.cli(&["cidr", "add", "10.200.0.0/16", "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        json["schema_version"] == 1 && json["added"][0] == "10.200.0.0/16",
        "{json}"
    );
    let revision = json["revision"].as_u64().context("revision")?;
    for args in [
        &["status", "--json"][..],
        &["stats", "--json"],
        &["cidr", "list", "--json"],
    ] {
        let out = agent.cli(args)?;
        ensure!(code(&out) == Some(0), "{args:?}: {}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(json["schema_version"] == 1, "{args:?}: {json}");
    }

    // Exit codes: bad input 2, stale revision 4.
    let out = agent.cli(&["cidr", "add", "10.1.0.0/33"])?;
    ensure!(
        code(&out) == Some(2),
        "bad CIDR: {:?} {}",
        out.status,
        text(&out.stderr)
    );
    let stale = (revision - 1).to_string();
    let out = agent.cli(&["cidr", "add", "10.201.0.0/16", "--if-revision", &stale])?;
    ensure!(
        code(&out) == Some(4),
        "stale: {:?} {}",
        out.status,
        text(&out.stderr)
    );

    // Every source: refused without --allow-everyone, and nothing changes.
    for everyone in ["0.0.0.0/0", "::/0"] {
        let out = agent.cli(&["cidr", "add", everyone])?;
        ensure!(
            code(&out) == Some(2) && text(&out.stderr).contains("--allow-everyone"),
            "{everyone}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
    }
    let list = agent.cli(&["cidr", "list", "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    ensure!(json["revision"] == revision, "the list changed: {json}");
    let out = agent.cli(&["cidr", "add", "::/0", "--allow-everyone"])?;
    ensure!(code(&out) == Some(0), "{}", text(&out.stderr));

    // Token verbs refuse a private-mode config and create nothing.
    let default_token = std::path::Path::new("/etc/serve-guard/token");
    let existed = default_token.exists();
    for verb in ["show", "rotate"] {
        let out = agent.cli(&["token", verb])?;
        ensure!(
            code(&out) == Some(2) && text(&out.stderr).contains("private"),
            "token {verb}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
        ensure!(out.stdout.is_empty(), "token {verb} printed something");
    }
    ensure!(
        default_token.exists() == existed,
        "token rotate created a file"
    );
    Ok(())
}
