//! `serve-guard check`: validates everything `run` would use, attaches and binds nothing (like
//! `nginx -t`): the config file, the interfaces, the CIDR file, and in public mode the token file
//! and the TLS certificate and key. Prints what it checked on stdout, and as warnings the paths
//! around the filter and the exposure audit: every listener a source outside the list would
//! reach under these port rules, and every current session they would put at risk.
//!
//! Exit codes: 0 everything is valid; 1 something is not (the error names the bad input);
//! 2 the command line itself is wrong (clap's usage error).

use super::output::{self, outln};
use std::path::Path;

use crate::config::{Config, Mode, Overrides};
use crate::token::{TokenError, read_token_file};
use serve_guard_proxy::tls::TlsFiles;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON: `checked` (one line per input) and `warnings`, once every check passed.
    #[arg(long)]
    json: bool,
}

/// What was checked, printed line by line, or gathered for `--json`.
#[derive(Default, serde::Serialize)]
struct Report {
    #[serde(skip)]
    json: bool,
    checked: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn ok(&mut self, line: String) {
        if !self.json {
            outln!("{line}");
        }
        self.checked.push(line);
    }

    fn warn(&mut self, line: String) {
        if !self.json {
            outln!("warning: {line}");
        }
        self.warnings.push(line);
    }
}

pub async fn exec(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let mut report = Report {
        json: args.json,
        ..Report::default()
    };
    let config = Config::load(config_path, &Overrides::default())?;
    report.ok(format!(
        "config {}: ok (mode {})",
        config_path.display(),
        config.mode
    ));
    let host = config.check_host()?;
    let interfaces = host
        .interfaces
        .iter()
        .map(|(name, index)| format!("{name} (index {index})"))
        .collect::<Vec<_>>()
        .join(", ");
    report.ok(format!("interfaces: {interfaces}"));
    // Paths around the filter do not make the config invalid, but the operator should know.
    match crate::node::exposure::scan_links(&host.links, &config.interfaces) {
        Ok(found) => found.iter().for_each(|e| report.warn(e.to_string())),
        Err(e) => report.warn(e.to_string()),
    }
    for warning in &host.warnings {
        report.warn(format!("{}: {warning}", config.cidr_file.display()));
    }
    crate::agent::check_cidr_consent(&config, &host.cidrs)?;
    report.ok(format!(
        "CIDR file {}: ok ({} IPv4, {} IPv6)",
        config.cidr_file.display(),
        host.cidrs.v4().len(),
        host.cidrs.v6().len()
    ));
    // Who outside this list reaches the node's listeners under these port rules, and which
    // current logins the rules would put at risk: never lock the operator out unawares.
    match crate::node::listeners::audit(&config.ports, &host.cidrs, config.audit) {
        Ok(audit) => audit.warnings().into_iter().for_each(|w| report.warn(w)),
        Err(e) => report.warn(format!("cannot audit the node's listeners: {e}")),
    }
    // A `[public]` table in private mode is validated with the config but its files are not
    // read: `run` does not read them either.
    if let (Mode::Public, Some(public)) = (config.mode, &config.public) {
        public.validate()?;
        match read_token_file(&public.token_file) {
            Ok(set) => report.ok(format!(
                "token file {}: ok ({} token(s) accepted)",
                public.token_file.display(),
                set.len()
            )),
            // `run` creates it; fine on a single node, a mistake in a cluster.
            Err(TokenError::Missing { path }) => report.warn(format!(
                "token file {}: missing; `run` creates it with a new token (in a cluster, distribute the same file to every node instead)",
                path.display()
            )),
            Err(e) => return Err(e.into()),
        }
        let account = crate::proxy_supervisor::account::lookup(&public.proxy_user)?;
        println!(
            "proxy_user {}: ok (uid {}, gid {}; the proxy process runs as it, without capabilities)",
            public.proxy_user, account.uid, account.gid
        );
        if let (Some(cert), Some(key)) = (&public.tls_cert, &public.tls_key) {
            TlsFiles::load(cert, key)?;
            report.ok(format!(
                "TLS certificate {} and key {}: ok",
                cert.display(),
                key.display()
            ));
        }
    }
    if report.json {
        return output::json(&report);
    }
    outln!("check passed: `serve-guard run` would start with this config");
    Ok(())
}
