//! The rollout recipes under deploy/, validated offline by the tools' own validators
//! (tests/python/validate_deploy.py: the Kubernetes OpenAPI schemas of kubernetes-validate, Ray's
//! prepare_config + validate_config), then checked for what serve-guard needs: the agent's
//! config parses with serve-guard's own parser and names the files the recipe puts in place, the
//! Kubernetes capabilities are the systemd unit's, and every node gets the same files.

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use serve_guard::config::{Config, Mode, Overrides};
use serve_guard_tests::{ray, workspace_root};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const DAEMONSET: &str = "deploy/kubernetes/serve-guard.yaml";
const RAY_CLUSTER: &str = "deploy/ray/cluster.yaml";
const RAY_FILES: &str = "deploy/ray/files";
/// Where `cargo xtask package` leaves the .deb.
const PACKAGE_DIR: &str = "target/debian";
const UNIT: &str = "deploy/systemd/serve-guard.service";
/// Ray Serve's HTTP port, which the recipes have Serve listen on.
const SERVE_HTTP_PORT: u16 = 8000;
/// The token file mode the DaemonSet asks of Kubernetes: owner and group read-only.
const SECRET_MODE: u64 = 0o440;

/// Runs the validator on `file` for `tool`; returns what it validated.
fn validated(tool: &str, file: &str) -> Result<Value> {
    let out = Command::new(ray::python()?)
        .arg(ray::script("validate_deploy.py"))
        .args([tool, file])
        .current_dir(workspace_root())
        .output()
        .context("running tests/python/validate_deploy.py")?;
    ensure!(
        out.status.success(),
        "{file} is not a valid {tool} config:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the validator's output is not JSON:\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn agent_config(text: &str, origin: &str) -> Result<Config> {
    Config::from_toml(text, Path::new(origin), &Overrides::default())
        .with_context(|| format!("the agent config in {origin}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("no string at {pointer}"))
}

/// The strings of the array at `pointer` (non-strings fail).
fn strings<'a>(v: &'a Value, pointer: &str) -> Result<Vec<&'a str>> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .with_context(|| format!("no array at {pointer}"))?
        .iter()
        .map(|s| {
            s.as_str()
                .with_context(|| format!("{s} in {pointer} is not a string"))
        })
        .collect()
}

/// The unit's capabilities without the `CAP_` prefix, as Kubernetes names them.
fn unit_capabilities() -> Result<BTreeSet<String>> {
    let unit = std::fs::read_to_string(workspace_root().join(UNIT))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet")?;
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect())
}

#[test]
fn the_daemonset_is_valid_kubernetes_and_runs_the_agent_as_the_unit_does() -> Result<()> {
    let validated = validated("kubernetes", DAEMONSET)?;
    let versions = validated["versions"].as_array().context("versions")?;
    ensure!(versions.len() == 2, "validated against {versions:?}");
    let docs = validated["documents"].as_array().context("documents")?;
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .with_context(|| format!("no {kind} in {DAEMONSET}"))
    };
    let (config_map, daemonset) = (find("ConfigMap")?, find("DaemonSet")?);
    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    ensure!(
        spec["hostNetwork"] == true,
        "the pod is not on the host network"
    );
    let containers = spec["containers"].as_array().context("containers")?;
    ensure!(containers.len() == 1, "one container expected");
    let container = &containers[0];

    let security = &container["securityContext"];
    let added: BTreeSet<String> = strings(security, "/capabilities/add")?
        .into_iter()
        .map(str::to_owned)
        .collect();
    ensure!(
        added == unit_capabilities()?,
        "the DaemonSet adds {added:?}, the unit allows {:?}",
        unit_capabilities()?
    );
    ensure!(
        security["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "every other capability must be dropped"
    );
    ensure!(
        security["privileged"] != true && security["allowPrivilegeEscalation"] == false,
        "the container must not be privileged"
    );

    // Volumes by name, and where the container mounts each.
    let volumes = spec["volumes"].as_array().context("volumes")?;
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .with_context(|| format!("no volume {name}"))
    };
    let mount_of = |name: &str| -> Result<PathBuf> {
        container["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .and_then(|m| m["mountPath"].as_str())
            .map(PathBuf::from)
            .with_context(|| format!("volume {name} is not mounted"))
    };
    let volume_named = |kind: &str, key: &str, wanted: &str| -> Result<String> {
        volumes
            .iter()
            .find(|v| v[kind][key] == wanted)
            .and_then(|v| v["name"].as_str().map(str::to_owned))
            .with_context(|| format!("no {kind} volume with {key} {wanted}"))
    };
    let bpffs = volume_named("hostPath", "path", "/sys/fs/bpf")?;
    ensure!(
        mount_of(&bpffs)? == Path::new("/sys/fs/bpf"),
        "bpffs mounted elsewhere"
    );
    let config_volume = volume_named("configMap", "name", str_at(config_map, "/metadata/name")?)?;
    let config_dir = mount_of(&config_volume)?;
    let secret_volume = volume("token")?;
    ensure!(
        secret_volume["secret"]["defaultMode"].as_u64() == Some(SECRET_MODE),
        "the token Secret must be mounted 0440 (defaultMode), got {}",
        secret_volume["secret"]["defaultMode"]
    );
    let secret_dir = mount_of("token")?;

    // The agent runs the config from the ConfigMap, which serve-guard's own parser accepts, and
    // whose files are the mounted ConfigMap and Secret keys.
    let config_path = match strings(container, "/args")?.as_slice() {
        ["run", "-c", path] => PathBuf::from(path),
        other => anyhow::bail!("the container runs {other:?}, not `run -c FILE`"),
    };
    let config_key = config_path
        .strip_prefix(&config_dir)
        .context("the config is not in the ConfigMap mount")?;
    let data = &config_map["data"];
    let config = agent_config(
        str_at(data, &format!("/{}", config_key.display()))?,
        DAEMONSET,
    )?;
    let cidr_key = config
        .cidr_file
        .strip_prefix(&config_dir)
        .context("cidr_file is not in the ConfigMap mount")?;
    let cidrs = str_at(data, &format!("/{}", cidr_key.display()))?;
    serve_guard::cidr::CidrList::from_file_text(cidrs).context("the ConfigMap's CIDR list")?;
    let public = config
        .public
        .as_ref()
        .context("the DaemonSet config is not public mode")?;
    ensure!(
        public.token_file.parent() == Some(secret_dir.as_path()),
        "token_file {} is not in the Secret mount {}",
        public.token_file.display(),
        secret_dir.display()
    );
    ensure!(config.pin_dir.starts_with("/sys/fs/bpf"), "pins off bpffs");

    // Readiness on /ready and the Prometheus scrape, both on the port the agent serves them on.
    let metrics_port = u64::from(config.metrics.listen.port());
    ensure!(
        config.metrics.listen.ip().is_unspecified(),
        "the kubelet probes the node address: metrics must listen on all addresses"
    );
    let probe = &container["readinessProbe"]["httpGet"];
    ensure!(probe["path"] == "/ready", "readiness is not on /ready");
    let probe_port = match &probe["port"] {
        Value::String(name) => container["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name.as_str()))
            .and_then(|p| p["containerPort"].as_u64()),
        port => port.as_u64(),
    };
    ensure!(
        probe_port == Some(metrics_port),
        "readiness probes port {probe_port:?}"
    );
    let annotations = &pod["metadata"]["annotations"];
    ensure!(
        annotations["prometheus.io/scrape"] == "true"
            && annotations["prometheus.io/path"] == "/metrics"
            && annotations["prometheus.io/port"] == metrics_port.to_string().as_str(),
        "Prometheus scrape annotations: {annotations}"
    );
    Ok(())
}

#[test]
fn the_ray_cluster_config_is_valid_for_ray_up_and_installs_the_same_files_on_every_node()
-> Result<()> {
    let config = validated("ray", RAY_CLUSTER)?;
    let mounts = config["file_mounts"]
        .as_object()
        .context("no file_mounts")?;
    // Remote folder of each local one that `cargo xtask package` or this repository fills.
    let remote_of = |local: &str| {
        mounts
            .iter()
            .find(|(_, l)| l.as_str() == Some(local))
            .map(|(remote, _)| remote.clone())
            .with_context(|| format!("file_mounts do not ship {local}: {mounts:?}"))
    };
    let package_dir = remote_of(&format!("./{PACKAGE_DIR}"))?;
    let files_dir = remote_of(&format!("./{RAY_FILES}"))?;

    // setup_commands run on every node (Ray merges them into the head's and the workers').
    let setup = strings(&config, "/setup_commands")?;
    let deb = format!(
        "{package_dir}/serve-guard_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    );
    ensure!(
        setup
            .iter()
            .any(|c| c.contains(&format!("dpkg --install {deb}"))),
        "setup_commands do not install the package `cargo xtask package` builds ({deb}): {setup:?}"
    );
    for key in ["head_setup_commands", "worker_setup_commands"] {
        let merged = strings(&config, &format!("/{key}"))?;
        ensure!(
            merged.starts_with(&setup),
            "{key} do not run the setup commands first: {merged:?}"
        );
    }

    // The agent config parses with serve-guard's own parser; every file it names is installed by
    // a setup command from the mounted files.
    let files = workspace_root().join(RAY_FILES);
    let agent = agent_config(
        &std::fs::read_to_string(files.join("serve-guard.toml"))?,
        RAY_FILES,
    )?;
    let token_file = agent
        .public
        .as_ref()
        .map(|p| p.token_file.clone())
        .context("the Ray recipe's agent config is not public mode")?;
    ensure!(agent.mode == Mode::Public, "not public mode");
    let installed = |path: &Path| -> bool {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        setup.iter().any(|c| {
            c.contains(&format!("{files_dir}/{name} "))
                && c.ends_with(&format!(" {}", path.display()))
        })
    };
    for path in [
        Path::new(serve_guard::cli::DEFAULT_CONFIG_PATH),
        agent.cidr_file.as_path(),
        token_file.as_path(),
    ] {
        ensure!(
            installed(path),
            "no setup command installs {}: {setup:?}",
            path.display()
        );
    }
    serve_guard::cidr::CidrList::from_file_text(&std::fs::read_to_string(files.join("vpc-cidrs"))?)
        .context("deploy/ray/files/vpc-cidrs")?;

    // Serve listens on every address on the port the filter protects and the proxy forwards to.
    let head = strings(&config, "/head_start_ray_commands")?;
    ensure!(
        head.iter().any(|c| c.contains("serve start")
            && c.contains("--http-host 0.0.0.0")
            && c.contains(&format!("--http-port {SERVE_HTTP_PORT}"))),
        "Serve is not started on 0.0.0.0:{SERVE_HTTP_PORT}: {head:?}"
    );
    ensure!(
        agent.serve_ports.contains(&SERVE_HTTP_PORT),
        "the filter does not protect Serve's port"
    );
    let upstream = agent
        .public
        .as_ref()
        .map(|p| p.upstream.authority().to_string());
    ensure!(
        upstream.as_deref() == Some(&format!("127.0.0.1:{SERVE_HTTP_PORT}")),
        "the proxy forwards to {upstream:?}"
    );
    Ok(())
}
