//! The deployment files (`deploy/`, `k8s/`) agree with the binary they
//! deploy: ports, probe paths, environment variable names, drain timing, the
//! Redis settings, and the metric names that the alerts and the Grafana
//! dashboard query. `scripts/check-deploy` validates the same files against
//! their schemas (Kubernetes, Compose, PromQL, hadolint); this test checks
//! what no schema knows: that they fit `switchboard serve`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use switchboard_testkit::{NodeProcess, RedisServer, eventually, get, switchboard_bin};

/// How long a node may take, after its drain, to close its last connections:
/// each close waits up to 1 s to send the close frame and 2 s for the answer
/// (docs/operations.md, Draining).
const LAST_CLOSES: Duration = Duration::from_secs(3);

const DEPLOYMENT: &str = "k8s/base/gateway/deployment.yaml";
const CONFIG_ENV: &str = "k8s/base/gateway/config.env";
const REDIS_CONF: &str = "k8s/base/redis/redis.conf";
const RULES: &str = "k8s/components/monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "k8s/components/monitoring/grafana-dashboard.json";
const COMPOSE: &str = "deploy/compose.yaml";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// Every document of a YAML file, merge keys (`<<: *anchor`) applied, as JSON.
fn yaml_docs(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            value.apply_merge().unwrap();
            serde_json::to_value(value).unwrap()
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The one document of `path` of kind `kind` named `name`.
fn object(path: &str, kind: &str, name: &str) -> Value {
    let docs = yaml_docs(path);
    let found = docs.into_iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name);
    found.unwrap_or_else(|| panic!("no {kind} {name} in {path}"))
}

/// Every file under `dir` (relative to the repository root), sorted.
fn files_under(dir: &str) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let root = repo_root();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), &mut out);
    out.sort();
    out
}

/// The identifiers in `text` (runs of ASCII letters, digits and `_`) that
/// start with `prefix` and go on: `SWITCHBOARD_` finds variables,
/// `switchboard_` metrics (and prose such as `SWITCHBOARD_*` is skipped).
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.len() > prefix.len() && word.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Every string inside a JSON value, concatenated (alert expressions and
/// annotations, dashboard queries and variables).
fn all_strings(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s}\n"),
        Value::Array(items) => items.iter().map(all_strings).collect(),
        Value::Object(map) => map.values().map(all_strings).collect(),
        _ => String::new(),
    }
}

/// One option of `switchboard serve --help`.
#[derive(Debug)]
struct Setting {
    flag: String,
    takes_value: bool,
    default: Option<String>,
}

/// The options of `switchboard serve --help`, by environment variable.
fn serve_settings() -> BTreeMap<String, Setting> {
    let output = Command::new(switchboard_bin()).args(["serve", "--help"]).env_clear().output().unwrap();
    assert!(output.status.success(), "switchboard serve --help failed");
    let help = String::from_utf8(output.stdout).unwrap();
    // One block per option: its `--flag <VALUE>` line and the text below it.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            blocks.push(String::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    let bracket = |block: &str, key: &str| -> Option<String> {
        let start = block.find(key)? + key.len();
        let end = block[start..].find(']')? + start;
        Some(block[start..end].to_owned())
    };
    let mut settings = BTreeMap::new();
    for block in blocks {
        let Some(env) = bracket(&block, "[env: ") else { continue };
        let env = env.split('=').next().unwrap().to_owned();
        let header = block.lines().next().unwrap();
        let flag = header.split_whitespace().find(|w| w.starts_with("--")).unwrap().trim_end_matches(',').to_owned();
        let setting = Setting { flag, takes_value: header.contains('<'), default: bracket(&block, "[default: ") };
        settings.insert(env, setting);
    }
    assert!(settings.len() >= 15, "too few settings parsed from serve --help: {settings:?}");
    settings
}

/// `KEY=VALUE` lines of the gateway's kustomize env file.
fn config_env() -> BTreeMap<String, String> {
    read(CONFIG_ENV)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// A setting as the pods get it: from config.env, else the binary's default.
fn configured(env: &str) -> String {
    if let Some(value) = config_env().get(env) {
        return value.clone();
    }
    let settings = serve_settings();
    let setting = settings.get(env).unwrap_or_else(|| panic!("{env} is not a serve setting"));
    setting.default.clone().unwrap_or_else(|| panic!("{env} has no default"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no port in {addr}"))
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The gateway container of the Deployment.
fn gateway_container(deployment: &Value) -> Value {
    let containers = deployment.pointer("/spec/template/spec/containers").unwrap().as_array().unwrap();
    containers.iter().find(|c| c["name"] == "switchboard").unwrap().clone()
}

/// A probe's port number and path; a named port resolved through `ports`.
fn probe_target(container: &Value, probe: &str, ports: &BTreeMap<String, u64>) -> (u64, String) {
    let get = &container[probe]["httpGet"];
    let port = match &get["port"] {
        Value::String(name) => *ports.get(name).unwrap_or_else(|| panic!("{probe}: no container port {name}")),
        other => other.as_u64().unwrap(),
    };
    (port, get["path"].as_str().unwrap_or_else(|| panic!("{probe} has no httpGet path")).to_owned())
}

#[test]
fn every_switchboard_variable_in_the_deployment_files_is_a_serve_setting() {
    let settings = serve_settings();
    let mut files = files_under("k8s");
    files.extend([COMPOSE.to_owned(), "deploy/Dockerfile".to_owned()]);
    let mut checked = BTreeSet::new();
    for file in &files {
        for name in words_with_prefix(&read(file), "SWITCHBOARD_") {
            assert!(settings.contains_key(&name), "{file} uses {name}, which `switchboard serve --help` does not list");
            checked.insert(name);
        }
    }
    for needed in
        ["SWITCHBOARD_REDIS_URL", "SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_API_KEY", "SWITCHBOARD_SHUTDOWN_GRACE"]
    {
        assert!(checked.contains(needed), "no deployment file sets {needed}");
    }
    println!("{} variables in {} files, all in serve --help: {checked:?}", checked.len(), files.len());
}

#[test]
fn ports_and_probe_paths_match_the_binary() {
    let listen = port_of(&configured("SWITCHBOARD_LISTEN"));
    let metrics = port_of(&configured("SWITCHBOARD_METRICS_LISTEN"));
    // config.env spells out the ports; they must be the binary's defaults too,
    // so that the image's EXPOSE and a bare `docker run` agree.
    let settings = serve_settings();
    assert_eq!(Some(listen), settings["SWITCHBOARD_LISTEN"].default.as_deref().map(port_of));
    assert_eq!(Some(metrics), settings["SWITCHBOARD_METRICS_LISTEN"].default.as_deref().map(port_of));

    let deployment = object(DEPLOYMENT, "Deployment", "switchboard");
    let container = gateway_container(&deployment);
    let ports: BTreeMap<String, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!((ports["http"], ports["metrics"]), (listen, metrics));
    assert_eq!(probe_target(&container, "readinessProbe", &ports), (listen, "/readyz".to_owned()));
    assert_eq!(probe_target(&container, "livenessProbe", &ports), (listen, "/healthz".to_owned()));
    assert_eq!(probe_target(&container, "startupProbe", &ports), (listen, "/healthz".to_owned()));

    let annotations = deployment.pointer("/spec/template/metadata/annotations").unwrap();
    assert_eq!(annotations["prometheus.io/port"], metrics.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The Services name container ports; the ServiceMonitor names the
    // metrics Service's port.
    for service in yaml_docs("k8s/base/gateway/service.yaml") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(ports.contains_key(target), "Service port {port} targets no container port");
        }
    }
    let metrics_service = object("k8s/base/gateway/service.yaml", "Service", "switchboard-metrics");
    assert_eq!(metrics_service.pointer("/spec/ports/0/name").unwrap(), "metrics");
    let monitor = object("k8s/components/monitoring/servicemonitor.yaml", "ServiceMonitor", "switchboard");
    assert_eq!(monitor.pointer("/spec/endpoints/0/port").unwrap(), "metrics");
    assert_eq!(monitor.pointer("/spec/endpoints/0/path").unwrap(), "/metrics");

    // The pods read their settings from the generated ConfigMap and their
    // secrets from keys that the Secret template has.
    let from = container.pointer("/envFrom/0/configMapRef/name").unwrap();
    let kustomization = yaml_docs("k8s/base/gateway/kustomization.yaml").remove(0);
    assert_eq!(kustomization.pointer("/configMapGenerator/0/name").unwrap(), from);
    let secret = object("k8s/base/gateway/secret.template.yaml", "Secret", "switchboard");
    for file in [DEPLOYMENT, "k8s/overlays/external-redis/redis-url-from-secret.yaml"] {
        for key in secret_keys(&yaml_docs(file)) {
            assert!(secret["stringData"].get(&key).is_some(), "{file}: key {key} is not in secret.template.yaml");
        }
    }

    // The image and the compose cluster use the same ports and paths.
    let dockerfile = read("deploy/Dockerfile");
    let expose = dockerfile.lines().find(|l| l.starts_with("EXPOSE")).unwrap();
    assert_eq!(expose.split_whitespace().skip(1).collect::<Vec<_>>(), [listen.to_string(), metrics.to_string()]);
    assert!(dockerfile.contains(&format!("127.0.0.1:{listen}/healthz\"")), "HEALTHCHECK must GET /healthz");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/switchboard\", \"serve\"]"));
    let haproxy = read("deploy/haproxy.cfg");
    assert!(haproxy.contains("http-check send meth GET uri /readyz"), "HAProxy must check /readyz");
    let prometheus = read("deploy/prometheus.yml");
    for node in ["node1", "node2", "node3"] {
        assert!(haproxy.contains(&format!("server {node} {node}:{listen}")), "HAProxy lacks {node}:{listen}");
        assert!(prometheus.contains(&format!("- {node}:{metrics}")), "Prometheus does not scrape {node}:{metrics}");
    }
}

/// The `key` of every `secretKeyRef` in `docs`.
fn secret_keys(docs: &[Value]) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(key) = map.get("secretKeyRef").and_then(|r| r["key"].as_str()) {
                    out.push(key.to_owned());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    docs.iter().for_each(|d| walk(d, &mut out));
    out
}

#[test]
fn the_kill_comes_only_after_the_prestop_wait_and_the_drain() {
    let grace = duration(&configured("SWITCHBOARD_SHUTDOWN_GRACE"));
    let deployment = object(DEPLOYMENT, "Deployment", "switchboard");
    let container = gateway_container(&deployment);
    let pre_stop = container.pointer("/lifecycle/preStop/sleep/seconds").unwrap().as_u64().unwrap();
    let termination = deployment.pointer("/spec/template/spec/terminationGracePeriodSeconds").unwrap();
    let termination = Duration::from_secs(termination.as_u64().unwrap());
    // The kubelet counts the preStop hook against the grace period.
    let needed = Duration::from_secs(pre_stop) + grace + LAST_CLOSES;
    assert!(termination > needed, "terminationGracePeriodSeconds {termination:?} must exceed {needed:?}");

    let compose = yaml_docs(COMPOSE).remove(0);
    let mut nodes = 0;
    for (name, service) in compose["services"].as_object().unwrap() {
        if !service["image"].as_str().unwrap_or_default().starts_with("switchboard") {
            continue;
        }
        nodes += 1;
        let grace = duration(service.pointer("/environment/SWITCHBOARD_SHUTDOWN_GRACE").unwrap().as_str().unwrap());
        let stop = duration(service["stop_grace_period"].as_str().unwrap());
        assert!(stop > grace + LAST_CLOSES, "{name}: stop_grace_period {stop:?} must exceed {grace:?} + closes");
    }
    assert_eq!(nodes, 3, "the compose cluster has three nodes");
}

#[test]
fn the_connection_alert_follows_the_connection_limit() {
    let limit: u64 = configured("SWITCHBOARD_MAX_CONNECTIONS").parse().unwrap();
    let rules = object(RULES, "PrometheusRule", "switchboard");
    let all = rules.pointer("/spec/groups/0/rules").unwrap().as_array().unwrap();
    let rule = all.iter().find(|r| r["alert"] == "SwitchboardConnectionsNearLimit").unwrap();
    let threshold: u64 = rule["expr"].as_str().unwrap().rsplit('>').next().unwrap().trim().parse().unwrap();
    assert_eq!(threshold, limit * 8 / 10, "the alert fires at 80 % of SWITCHBOARD_MAX_CONNECTIONS");
}

/// `redis.conf` as `redis-server` flags, less where it listens and writes
/// (the test's server picks its own port and directory).
fn redis_conf_flags() -> Vec<String> {
    let mut flags = Vec::new();
    for line in read(REDIS_CONF).lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(directive) = words.next().filter(|w| !w.starts_with('#')) else { continue };
        if ["bind", "port", "dir", "protected-mode"].contains(&directive) {
            continue;
        }
        flags.push(format!("--{directive}"));
        flags.extend(words.map(|w| w.trim_matches('"').to_owned()));
    }
    flags
}

/// Starts Redis with the Kubernetes redis.conf and a node with the
/// Kubernetes config.env, probes it where the Deployment does, and checks
/// that every metric the alerts and the dashboard query is in its /metrics.
#[tokio::test]
async fn a_node_configured_as_in_the_manifests_serves_its_probes_and_every_queried_metric() {
    let flags = redis_conf_flags();
    let redis = RedisServer::start_with(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    for (setting, value) in [("appendonly", "yes"), ("appendfsync", "everysec"), ("maxmemory-policy", "noeviction")] {
        let answer = redis.cli(&["config", "get", setting]).await;
        assert_eq!(answer.lines().nth(1), Some(value), "redis.conf: {setting}");
    }

    // config.env as flags: the testkit picks the ports, the test its Redis.
    let settings = serve_settings();
    let mut args = vec!["--redis-url".to_owned(), redis.url()];
    for (env, value) in config_env() {
        let skip = ["SWITCHBOARD_LISTEN", "SWITCHBOARD_METRICS_LISTEN", "SWITCHBOARD_REDIS_URL"];
        if !env.starts_with("SWITCHBOARD_") || skip.contains(&env.as_str()) {
            continue;
        }
        let setting = settings.get(&env).unwrap_or_else(|| panic!("{CONFIG_ENV}: {env} is not a serve setting"));
        if setting.takes_value {
            args.extend([setting.flag.clone(), value]);
        } else if value == "true" {
            args.push(setting.flag.clone());
        }
    }
    // A value the node refuses makes it exit 64 naming the setting (on the
    // test's stderr) before it listens.
    let node = NodeProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    let deployment = object(DEPLOYMENT, "Deployment", "switchboard");
    let container = gateway_container(&deployment);
    let path = |probe: &str| container[probe]["httpGet"]["path"].as_str().unwrap().to_owned();
    let ready = path("readinessProbe");
    eventually("the readiness probe to pass", || async { get(node.public, &ready, &[]).await.status == 200 }).await;
    assert_eq!(get(node.public, &path("livenessProbe"), &[]).await.status, 200);
    assert_eq!(get(node.public, &path("startupProbe"), &[]).await.status, 200);

    let scrape_path = deployment.pointer("/spec/template/metadata/annotations/prometheus.io~1path").unwrap();
    let exposition = get(node.metrics, scrape_path.as_str().unwrap(), &[]).await;
    assert_eq!(exposition.status, 200);
    // Metric families and their types, from the `# TYPE name type` lines.
    let families: BTreeMap<&str, &str> =
        exposition.body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    let exists = |name: &str| {
        families.contains_key(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| families.get(base) == Some(&"histogram")))
    };

    let rules = object(RULES, "PrometheusRule", "switchboard");
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut checked = 0;
    for (file, text) in [(RULES, all_strings(&rules["spec"])), (DASHBOARD, all_strings(&dashboard))] {
        let names = words_with_prefix(&text, "switchboard_");
        assert!(names.len() >= 5, "{file}: too few metric names found: {names:?}");
        for name in &names {
            assert!(exists(name), "{file} queries {name}, which a running node does not export");
        }
        checked += names.len();
        println!("{file}: {names:?}");
    }
    println!("{checked} metric references checked against {} families", families.len());
}
