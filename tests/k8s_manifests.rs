//! Every manifest in deploy/ parses into its Kubernetes type (k8s-openapi, or our CRD types with
//! their validation) without losing a field, and says what it is meant to say: the chart is
//! rendered from its own templates (tests/k8s_support/gotmpl.rs renders the subset of Go
//! templates it uses), its RBAC grants exactly the API calls the watchers make, the EPP and agent
//! get the flags, ports, probes and privileges the binaries expect, and the examples wire the
//! gateway, Envoy, the pool and the EPP together.
mod k8s_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_support::gotmpl::{Chart, documents};
use k8s_support::{FakeApiServer, wait_for};
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use switchyard::k8s::api::{
    FailureMode, InferenceObjective, InferencePool, parse_objective, parse_pool,
};
use switchyard::k8s::{
    NodePodWatchConfig, PoolWatchConfig, run_node_pod_watcher, run_pool_watcher,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn chart() -> Chart {
    Chart::load(&repo().join("deploy/helm/switchyard")).unwrap_or_else(|e| panic!("{e}"))
}

/// A manifest parsed into its type. (Test-only: a few dozen values, so variant sizes do not
/// matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Object {
    ConfigMap(ConfigMap),
    Service(Service),
    ServiceAccount(ServiceAccount),
    Deployment(Box<Deployment>),
    DaemonSet(Box<DaemonSet>),
    Role(Role),
    RoleBinding(RoleBinding),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Crd(Box<CustomResourceDefinition>),
    Pool(Box<InferencePool>),
    Objective(InferenceObjective),
    /// Kinds with no Rust type here (Gateway API, Prometheus Operator): checked by field.
    Unstructured(String, Json),
}

impl Object {
    fn kind(&self) -> &str {
        match self {
            Object::ConfigMap(_) => "ConfigMap",
            Object::Service(_) => "Service",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Deployment(_) => "Deployment",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Crd(_) => "CustomResourceDefinition",
            Object::Pool(_) => "InferencePool",
            Object::Objective(_) => "InferenceObjective",
            Object::Unstructured(kind, _) => kind,
        }
    }
}

/// Paths present in `original` but absent (or different) after a round trip through a type:
/// misspelt or misplaced fields, which serde would otherwise drop silently.
fn lost_fields(original: &Json, round_trip: &Json, path: &str, lost: &mut Vec<String>) {
    match (original, round_trip) {
        (Json::Object(a), Json::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => lost_fields(value, other, &here, lost),
                    None if value.is_null() => {}
                    None => lost.push(here),
                }
            }
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), lost);
            }
        }
        (a, b) if a == b => {}
        (Json::Number(a), Json::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) => lost.push(format!("{path} ({a} became {b})")),
    }
}

fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Json, at: &str) -> T {
    let value: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{at}: does not parse: {e}"));
    let round_trip = serde_json::to_value(&value).expect("serialize");
    let mut lost = Vec::new();
    lost_fields(doc, &round_trip, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{at}: fields the type does not know: {lost:#?}"
    );
    value
}

fn parse_object(doc: &Json, at: &str) -> Object {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let at = format!("{at} ({kind} {})", doc["metadata"]["name"]);
    assert!(
        doc["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{at}: no metadata.name"
    );
    match (api_version, kind) {
        ("v1", "ConfigMap") => Object::ConfigMap(typed(doc, &at)),
        ("v1", "Service") => Object::Service(typed(doc, &at)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(typed(doc, &at)),
        ("apps/v1", "Deployment") => Object::Deployment(Box::new(typed(doc, &at))),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(typed(doc, &at))),
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(doc, &at)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(typed(doc, &at)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(doc, &at)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(typed(doc, &at))
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            Object::Crd(Box::new(typed(doc, &at)))
        }
        ("inference.networking.k8s.io/v1", "InferencePool") => {
            let pool = parse_pool(doc.clone()).unwrap_or_else(|e| panic!("{at}: invalid: {e}"));
            let _: InferencePool = typed(doc, &at);
            Object::Pool(Box::new(pool))
        }
        ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective") => {
            let objective =
                parse_objective(doc.clone()).unwrap_or_else(|e| panic!("{at}: invalid: {e}"));
            let _: InferenceObjective = typed(doc, &at);
            Object::Objective(objective)
        }
        ("gateway.networking.k8s.io/v1", "Gateway" | "HTTPRoute")
        | ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            assert!(doc["spec"].is_object(), "{at}: no spec");
            Object::Unstructured(kind.to_string(), doc.clone())
        }
        other => panic!("{at}: no type known for {other:?}; teach this test about it"),
    }
}

fn yaml_to_json(value: &serde_yaml::Value) -> Json {
    serde_json::to_value(value).expect("YAML with string keys")
}

/// Renders the chart and parses every document.
fn render(release: &str, namespace: &str, overrides: Json) -> Vec<Object> {
    let overrides: serde_yaml::Value = serde_json::from_value(overrides).expect("overrides");
    let rendered = chart()
        .render(release, namespace, &overrides)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut objects = Vec::new();
    for file in rendered {
        let docs = documents(&file.text).unwrap_or_else(|e| panic!("{}: {e}", file.file));
        for doc in docs {
            let object = parse_object(&yaml_to_json(&doc), &file.file);
            if let Some(ns) = doc.get("metadata").and_then(|m| m.get("namespace")) {
                assert_eq!(ns.as_str(), Some(namespace), "{}: namespace", file.file);
            }
            objects.push(object);
        }
    }
    objects
}

fn kinds(objects: &[Object]) -> Vec<String> {
    let mut kinds: Vec<String> = objects.iter().map(|o| o.kind().to_string()).collect();
    kinds.sort();
    kinds
}

fn one<'a, T>(objects: &'a [Object], pick: impl Fn(&'a Object) -> Option<&'a T>) -> &'a T {
    let found: Vec<&T> = objects.iter().filter_map(pick).collect();
    assert_eq!(found.len(), 1, "expected exactly one");
    found[0]
}

fn container(template: &PodTemplateSpec) -> &Container {
    let pod = template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

fn args(container: &Container) -> Vec<&str> {
    container
        .args
        .iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// The value following `flag` in an argument list.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

fn port_of(container: &Container, name: &str) -> i32 {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
        .unwrap_or_else(|| panic!("no port {name}"))
}

#[test]
fn default_render_has_every_object_and_parses() {
    let objects = render("switchyard", "llm", json!({}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "InferencePool",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
        ]
    );
    // Each workload runs as its own ServiceAccount.
    let accounts: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| match o {
            Object::ServiceAccount(sa) => sa.metadata.name.clone(),
            _ => None,
        })
        .collect();
    let used: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Deployment(d) => d.spec.template.spec.as_ref()?.service_account_name.clone(),
            Object::DaemonSet(d) => d.spec.template.spec.as_ref()?.service_account_name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(accounts, used);
}

#[test]
fn epp_deployment_matches_the_binary_and_the_pool() {
    let objects = render("switchyard", "llm", json!({}));
    let deployment = one(&objects, |o| match o {
        Object::Deployment(d) => Some(d.as_ref()),
        _ => None,
    });
    let spec = &deployment.spec;
    let epp = container(&spec.template);
    let args = args(epp);
    assert_eq!(args[..4], ["--log", "info", "--log-format", "json"]);
    assert_eq!(args[4], "epp");
    assert_eq!(flag(&args, "--pool-name"), Some("switchyard"));
    assert_eq!(flag(&args, "--pool-namespace"), Some("llm"));
    assert_eq!(flag(&args, "--grpc-port"), Some("9002"));
    assert_eq!(flag(&args, "--grpc-health-port"), Some("9003"));
    assert_eq!(flag(&args, "--metrics-port"), Some("9090"));
    assert!(!args.contains(&"--secure-serving=false"), "TLS by default");
    assert_eq!(
        (
            port_of(epp, "grpc"),
            port_of(epp, "grpc-health"),
            port_of(epp, "metrics")
        ),
        (9002, 9003, 9090)
    );

    // Probes: gRPC health on 9003, services liveness / readiness.
    let liveness = epp
        .liveness_probe
        .as_ref()
        .and_then(|p| p.grpc.as_ref())
        .expect("grpc");
    let readiness = epp
        .readiness_probe
        .as_ref()
        .and_then(|p| p.grpc.as_ref())
        .expect("grpc");
    assert_eq!(
        (liveness.port, liveness.service.as_deref()),
        (9003, Some("liveness"))
    );
    assert_eq!(
        (readiness.port, readiness.service.as_deref()),
        (9003, Some("readiness"))
    );

    // --config points into the mounted ConfigMap, which holds an EndpointPickerConfig.
    let config_path = flag(&args, "--config").expect("--config");
    let mount = epp
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| config_path.starts_with(&format!("{}/", m.mount_path)))
        .expect("config mount");
    let pod = spec.template.spec.as_ref().expect("pod");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("config volume");
    let map_name = volume
        .config_map
        .as_ref()
        .map(|c| c.name.clone())
        .expect("configMap");
    let config_map = one(&objects, |o| match o {
        Object::ConfigMap(c) if c.metadata.name.as_deref() == Some(map_name.as_str()) => Some(c),
        _ => None,
    });
    let key = config_path.rsplit('/').next().expect("file name");
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .expect("config key");
    let config: serde_yaml::Value = serde_yaml::from_str(text).expect("config YAML");
    assert_eq!(config["kind"].as_str(), Some("EndpointPickerConfig"));
    let weights: Vec<(String, i64)> = config["schedulingProfiles"][0]["plugins"]
        .as_sequence()
        .expect("plugins")
        .iter()
        .filter_map(|p| Some((p["pluginRef"].as_str()?.to_string(), p["weight"].as_i64()?)))
        .collect();
    assert_eq!(
        weights,
        [
            ("queue-scorer".into(), 2),
            ("kv-cache-utilization-scorer".into(), 2),
            ("prefix-cache-scorer".into(), 3)
        ]
    );

    // The Service selects the EPP pods and exposes the three ports; the pool points at it.
    let service = one(&objects, |o| match o {
        Object::Service(s) if s.metadata.name.as_deref() == Some("switchyard-epp") => Some(s),
        _ => None,
    });
    let service_spec = service.spec.as_ref().expect("spec");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    let selector = service_spec.selector.clone().expect("selector");
    let pod_labels = pod_labels.expect("pod labels");
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let ports: Vec<i32> = service_spec
        .ports
        .iter()
        .flatten()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [9002, 9003, 9004, 9090]);

    let pool = one(&objects, |o| match o {
        Object::Pool(p) => Some(p.as_ref()),
        _ => None,
    });
    assert_eq!(pool.metadata.name.as_deref(), Some("switchyard"));
    let picker = pool.spec.endpoint_picker_ref.as_ref().expect("picker");
    assert_eq!(picker.name, "switchyard-epp");
    assert_eq!(picker.port.map(|p| p.number), Some(9002));
    assert_eq!(picker.failure_mode, FailureMode::FailClose);
    assert_eq!(
        pool.spec
            .selector
            .match_labels
            .get("app")
            .map(String::as_str),
        Some("vllm-llama3-8b-instruct")
    );
}

#[test]
fn agent_daemonset_has_the_access_it_needs_and_no_more() {
    let objects = render("switchyard", "llm", json!({}));
    let daemonset = one(&objects, |o| match o {
        Object::DaemonSet(d) => Some(d.as_ref()),
        _ => None,
    });
    let template = &&daemonset.spec.template;
    let pod = template.spec.as_ref().expect("pod");
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("switchyard-agent")
    );
    let agent = container(template);
    let args = args(agent);
    assert_eq!(args[4], "agent");
    assert_eq!(flag(&args, "--node-name"), Some("$(NODE_NAME)"));
    assert_eq!(flag(&args, "--epp"), Some("switchyard-epp.llm.svc:9004"));
    assert_eq!(flag(&args, "--telemetry"), Some("auto"));
    assert_eq!(flag(&args, "--metrics-port"), Some("9091"));

    let env = |name: &str| {
        agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    let node = env("NODE_NAME")
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref());
    assert_eq!(node.map(|f| f.field_path.as_str()), Some("spec.nodeName"));
    assert_eq!(env("NVIDIA_VISIBLE_DEVICES").value.as_deref(), Some("all"));
    assert_eq!(env("SWITCHYARD_ENGINE").value.as_deref(), Some("auto"));

    let security = agent.security_context.as_ref().expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        capabilities.add.clone().unwrap_or_default(),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
    );
    assert_eq!(capabilities.drop.clone().unwrap_or_default(), ["ALL"]);

    // No GPU is requested: the NVIDIA runtime gives NVML access without taking a GPU.
    let resources = agent.resources.as_ref().expect("resources");
    for list in [&resources.requests, &resources.limits] {
        assert!(
            !list
                .iter()
                .flatten()
                .any(|(k, _)| k.starts_with("nvidia.com/"))
        );
    }

    let mounts: Vec<(&str, bool)> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.as_str(), m.read_only.unwrap_or(false)))
        .collect();
    assert_eq!(
        mounts,
        [("/sys/fs/bpf", false), ("/host/sys/fs/cgroup", true)]
    );
    let host_paths: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    assert_eq!(host_paths, ["/sys/fs/bpf", "/sys/fs/cgroup"]);

    // HTTP health on the metrics port.
    let metrics = port_of(agent, "metrics");
    assert_eq!(metrics, 9091);
    for (probe, path) in [
        (&agent.liveness_probe, "/healthz"),
        (&agent.readiness_probe, "/readyz"),
    ] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet");
        assert_eq!(http.path.as_deref(), Some(path));
        assert_eq!(
            http.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
    }
}

/// (API group, resource, verb) triples a role grants.
fn granted(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    set.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    set
}

/// The API calls the EPP and agent watchers make against a live (fake) API server.
async fn watcher_calls() -> (Vec<k8s_support::Call>, Vec<k8s_support::Call>) {
    let (client, api) = FakeApiServer::start();
    api.apply_pool(
        "pool",
        "llm",
        json!({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}]}),
    );
    api.apply_pod("p", "llm", Some("10.0.0.1"), true, json!({"app": "x"}));
    let mut config = PoolWatchConfig::new("pool", "llm");
    config.debounce = Duration::from_millis(10);
    let (mut rx, _task) = run_pool_watcher(client, config);
    wait_for(&mut rx, "pool synced", |s| !s.endpoints.is_empty()).await;
    k8s_support::wait_until("three watches", || api.open_watches() == 3).await;
    let epp_calls = api.calls();
    assert!(api.unexpected().is_empty(), "{:?}", api.unexpected());

    let (client, api) = FakeApiServer::start();
    let mut config = NodePodWatchConfig::new("node-a");
    config.debounce = Duration::from_millis(10);
    let (mut rx, _task) = run_node_pod_watcher(client, config);
    wait_for(&mut rx, "node synced", |p| p.synced).await;
    k8s_support::wait_until("one watch", || api.open_watches() == 1).await;
    assert!(api.unexpected().is_empty(), "{:?}", api.unexpected());
    (epp_calls, api.calls())
}

fn needed(calls: &[k8s_support::Call]) -> BTreeSet<(String, String, String)> {
    calls
        .iter()
        .map(|c| {
            let (group, resource) = c.resource.rbac();
            (group.to_string(), resource.to_string(), c.verb.to_string())
        })
        .collect()
}

#[tokio::test]
async fn rbac_grants_exactly_what_the_watchers_call() {
    let objects = render("switchyard", "llm", json!({}));
    let (epp_calls, agent_calls) = watcher_calls().await;

    // The EPP: namespaced calls only, all in the pool's namespace, covered by its Role.
    assert!(
        epp_calls
            .iter()
            .all(|c| c.namespace.as_deref() == Some("llm"))
    );
    let role = one(&objects, |o| match o {
        Object::Role(r) => Some(r),
        _ => None,
    });
    assert_eq!(role.metadata.namespace.as_deref(), Some("llm"));
    assert_eq!(
        granted(role.rules.as_deref().unwrap_or_default()),
        needed(&epp_calls)
    );
    let binding = one(&objects, |o| match o {
        Object::RoleBinding(b) => Some(b),
        _ => None,
    });
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().unwrap_or_default()
    );
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.name, "switchyard-epp");

    // The agent: cluster-wide pod list/watch, covered by its ClusterRole.
    assert!(agent_calls.iter().all(|c| c.namespace.is_none()));
    let cluster_role = one(&objects, |o| match o {
        Object::ClusterRole(r) => Some(r),
        _ => None,
    });
    assert_eq!(
        granted(cluster_role.rules.as_deref().unwrap_or_default()),
        needed(&agent_calls)
    );
    let binding = one(&objects, |o| match o {
        Object::ClusterRoleBinding(b) => Some(b),
        _ => None,
    });
    assert_eq!(
        binding.role_ref.name,
        cluster_role.metadata.name.clone().unwrap_or_default()
    );
    assert_eq!(
        binding.subjects.as_ref().expect("subjects")[0].name,
        "switchyard-agent"
    );
}

#[test]
fn optional_parts_follow_the_values() {
    let objects = render(
        "r",
        "ns",
        json!({
            "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
            "agent": {"enabled": false, "runtimeClassName": "nvidia"},
            "inferencePool": {"create": false, "name": "mine"},
            "epp": {"secureServing": false, "replicas": 2, "extraArgs": ["--debug-endpoint"]},
            "image": {"tag": "v9"},
            "imagePullSecrets": [{"name": "regcred"}],
        }),
    );
    let kinds = kinds(&objects);
    assert!(!kinds.contains(&"DaemonSet".to_string()));
    assert!(!kinds.contains(&"ClusterRole".to_string()));
    assert!(!kinds.contains(&"InferencePool".to_string()));
    let monitors: Vec<&Json> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Unstructured(kind, doc) if kind == "ServiceMonitor" => Some(doc),
            _ => None,
        })
        .collect();
    assert_eq!(monitors.len(), 1, "no agent monitor without agents");
    assert_eq!(monitors[0]["metadata"]["labels"]["release"], "prom");
    let epp_service = one(&objects, |o| match o {
        Object::Service(s) => Some(s),
        _ => None,
    });
    let service_labels = epp_service.metadata.labels.clone().expect("labels");
    let selected = monitors[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector");
    assert!(
        selected
            .iter()
            .all(|(k, v)| service_labels.get(k).map(String::as_str) == v.as_str())
    );
    let port = monitors[0]["spec"]["endpoints"][0]["port"].as_str();
    assert!(
        epp_service
            .spec
            .as_ref()
            .expect("spec")
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == port)
    );

    let deployment = one(&objects, |o| match o {
        Object::Deployment(d) => Some(d.as_ref()),
        _ => None,
    });
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
        Some("regcred")
    );
    let epp = &pod.containers[0];
    assert_eq!(
        epp.image.as_deref(),
        Some("ghcr.io/switchyard-router/switchyard:v9")
    );
    let args = args(epp);
    assert_eq!(flag(&args, "--pool-name"), Some("mine"));
    assert!(args.contains(&"--secure-serving=false"));
    assert_eq!(args.last(), Some(&"--debug-endpoint"));
}

#[test]
fn agent_runtime_class_and_monitor() {
    let objects = render(
        "r",
        "ns",
        json!({"serviceMonitor": {"enabled": true}, "agent": {"runtimeClassName": "nvidia"}}),
    );
    let daemonset = one(&objects, |o| match o {
        Object::DaemonSet(d) => Some(d.as_ref()),
        _ => None,
    });
    let pod = daemonset.spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
    let monitors = objects
        .iter()
        .filter(|o| o.kind() == "ServiceMonitor")
        .count();
    assert_eq!(monitors, 2);
}

#[test]
fn unknown_values_are_errors() {
    let overrides: serde_yaml::Value = serde_yaml::from_str("{}").expect("yaml");
    assert!(chart().render("r", "ns", &overrides).is_ok());
    // The renderer refuses a reference values.yaml does not define: a typo in a template
    // cannot render silently empty.
    let dir = tempfile::tempdir().expect("tempdir");
    let chart_dir = repo().join("deploy/helm/switchyard");
    std::fs::create_dir_all(dir.path().join("templates")).expect("mkdir");
    for file in ["Chart.yaml", "values.yaml"] {
        std::fs::copy(chart_dir.join(file), dir.path().join(file)).expect("copy");
    }
    std::fs::write(
        dir.path().join("templates/x.yaml"),
        "a: {{ .Values.epp.grpcPrt }}\n",
    )
    .expect("write");
    let err = Chart::load(dir.path())
        .and_then(|c| c.render("r", "ns", &overrides))
        .err()
        .expect("must fail");
    assert!(err.contains("grpcPrt") && err.contains("x.yaml:1"), "{err}");
}

/// The release name of deploy/manifests/: the pool name the examples use (GIE's convention of
/// naming the release after its pool).
const STATIC_RELEASE: &str = "vllm-llama3-8b-instruct";

/// The chart's default render for `kubectl apply` users lives in deploy/manifests/.
#[test]
fn static_manifests_match_the_chart() {
    let rendered = chart()
        .render(
            STATIC_RELEASE,
            "default",
            &serde_yaml::Value::Mapping(Default::default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::from(
        "# Generated from deploy/helm/switchyard with default values (release\n\
         # \"vllm-llama3-8b-instruct\", the pool of deploy/examples/, namespace \"default\");\n\
         # regenerate with\n\
         # `SWITCHYARD_REGENERATE=1 cargo test -p router-user --test k8s_manifests`.\n\
         # Apply deploy/crds/ first.\n",
    );
    for file in &rendered {
        let body = file.text.trim();
        if body.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "---\n# Source: switchyard/templates/{}\n{body}\n",
            file.file
        ));
    }
    let path = repo().join("deploy/manifests/switchyard.yaml");
    if std::env::var_os("SWITCHYARD_REGENERATE").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, &text).expect("write");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "{} is stale; regenerate with SWITCHYARD_REGENERATE=1 cargo test -p router-user --test k8s_manifests",
        path.display()
    );
    let objects: Vec<Object> = documents(&on_disk)
        .expect("documents")
        .iter()
        .map(|d| parse_object(&yaml_to_json(d), "deploy/manifests/switchyard.yaml"))
        .collect();
    assert_eq!(objects.len(), 12);
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn parse_file(path: &Path) -> Vec<Object> {
    let text = std::fs::read_to_string(path).expect("read");
    documents(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(|d| parse_object(&yaml_to_json(d), &path.display().to_string()))
        .collect()
}

#[test]
fn every_manifest_in_deploy_parses() {
    let mut count = 0;
    let mut crds = BTreeSet::new();
    for dir in [
        "deploy/crds",
        "deploy/examples",
        "deploy/manifests",
        "deploy/helm/switchyard/crds",
    ] {
        for file in yaml_files(&repo().join(dir)) {
            for object in parse_file(&file) {
                if let Object::Crd(crd) = &object {
                    crds.insert(crd.metadata.name.clone().unwrap_or_default());
                }
                count += 1;
            }
        }
    }
    assert_eq!(
        crds.into_iter().collect::<Vec<_>>(),
        [
            "inferenceobjectives.inference.networking.x-k8s.io",
            "inferencepools.inference.networking.k8s.io"
        ]
    );
    assert!(count >= 20, "only {count} objects under deploy/");
}

#[test]
fn examples_wire_gateway_pool_and_model_servers() {
    let examples = repo().join("deploy/examples");
    let pool_objects = parse_file(&examples.join("inferencepool.yaml"));
    let pool = one(&pool_objects, |o| match o {
        Object::Pool(p) => Some(p.as_ref()),
        _ => None,
    });
    let pool_name = pool.metadata.name.clone().expect("name");
    let objectives: Vec<&InferenceObjective> = pool_objects
        .iter()
        .filter_map(|o| match o {
            Object::Objective(obj) => Some(obj),
            _ => None,
        })
        .collect();
    assert!(objectives.len() >= 2);
    assert!(objectives.iter().all(|o| o.spec.pool_ref.name == pool_name));
    // The chart, installed as release <pool name>, serves this pool: same EPP Service.
    let picker = pool.spec.endpoint_picker_ref.as_ref().expect("picker");
    assert_eq!(picker.name, format!("{pool_name}-epp"));
    assert_eq!(picker.port.map(|p| p.number), Some(9002));

    // The HTTPRoute sends the Gateway's traffic to the pool.
    let route = parse_file(&examples.join("httproute.yaml"));
    let Object::Unstructured(_, route) = &route[0] else {
        panic!("HTTPRoute expected")
    };
    let gateway = parse_file(&examples.join("gateway.yaml"));
    let Object::Unstructured(_, gateway) = &gateway[0] else {
        panic!("Gateway expected")
    };
    assert_eq!(
        route["spec"]["parentRefs"][0]["name"],
        gateway["metadata"]["name"]
    );
    let backend = &route["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!(backend["group"], "inference.networking.k8s.io");
    assert_eq!(backend["kind"], "InferencePool");
    assert_eq!(backend["name"].as_str(), Some(pool_name.as_str()));

    // Both model-server Deployments are selected by the pool and serve its target port.
    for file in ["sim.yaml", "vllm.yaml"] {
        let objects = parse_file(&examples.join(file));
        let deployment = one(&objects, |o| match o {
            Object::Deployment(d) => Some(d.as_ref()),
            _ => None,
        });
        let template = &&deployment.spec.template;
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert!(
            pool.spec
                .selector
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v)),
            "{file}: pods not selected by the pool"
        );
        let server = container(template);
        let served: Vec<i32> = server
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert!(
            pool.spec
                .target_ports
                .iter()
                .all(|p| served.contains(&p.number)),
            "{file}"
        );
        if file == "sim.yaml" {
            let args = args(server);
            assert_eq!(args[0], "sim");
            let resources = server.resources.as_ref().expect("resources");
            assert!(
                !resources
                    .limits
                    .iter()
                    .flatten()
                    .any(|(k, _)| k.starts_with("nvidia.com/"))
            );
        }
    }
}

#[test]
fn envoy_example_uses_the_reference_ext_proc_settings() {
    let objects = parse_file(&repo().join("deploy/examples/envoy.yaml"));
    let config_map = one(&objects, |o| match o {
        Object::ConfigMap(c) => Some(c),
        _ => None,
    });
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("envoy.yaml"))
        .expect("bootstrap");
    let bootstrap: Json = yaml_to_json(&serde_yaml::from_str(text).expect("bootstrap YAML"));

    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array()
        .expect("listeners");
    let hcm = listeners
        .iter()
        .flat_map(|l| l["filter_chains"].as_array().into_iter().flatten())
        .flat_map(|c| c["filters"].as_array().into_iter().flatten())
        .map(|f| &f["typed_config"])
        .find(|c| {
            c["http_filters"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["name"] == "envoy.filters.http.ext_proc"))
        })
        .expect("a listener with ext_proc");
    let filters = hcm["http_filters"].as_array().expect("filters");
    assert_eq!(
        filters.last().map(|f| &f["name"]),
        Some(&json!("envoy.filters.http.router"))
    );
    let ext_proc = &filters
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_proc")
        .expect("ext_proc")["typed_config"];
    let mode = &ext_proc["processing_mode"];
    assert_eq!(mode["request_header_mode"], "SEND");
    assert_eq!(mode["request_body_mode"], "FULL_DUPLEX_STREAMED");
    assert_eq!(mode["response_body_mode"], "FULL_DUPLEX_STREAMED");
    assert_eq!(mode["request_trailer_mode"], "SEND");
    assert_eq!(mode["response_trailer_mode"], "SEND");
    assert_eq!(
        ext_proc["failure_mode_allow"], false,
        "FailClose, the pool default"
    );
    assert_eq!(ext_proc["allow_mode_override"], false);
    let forwarded = &ext_proc["metadata_options"]["forwarding_namespaces"]["untyped"];
    assert!(
        forwarded
            .as_array()
            .is_some_and(|n| n.contains(&json!("envoy.lb")))
    );
    let received = &ext_proc["metadata_options"]["receiving_namespaces"]["untyped"];
    assert!(
        received
            .as_array()
            .is_some_and(|n| n.contains(&json!("envoy.lb")))
    );
    let ext_proc_cluster = ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"].clone();

    let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .expect("clusters");
    let cluster = |name: &Json| {
        clusters
            .iter()
            .find(|c| &c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    };
    let destination = cluster(&route["cluster"]);
    assert_eq!(destination["type"], "ORIGINAL_DST");
    assert_eq!(destination["lb_policy"], "CLUSTER_PROVIDED");
    assert_eq!(
        destination["original_dst_lb_config"]["use_http_header"],
        true
    );
    assert_eq!(
        destination["original_dst_lb_config"]["http_header_name"],
        "x-gateway-destination-endpoint"
    );

    // The EPP cluster: HTTP/2, TLS (the EPP's default), gRPC health of the ext_proc service,
    // on the EPP Service's port.
    let epp = cluster(&ext_proc_cluster);
    assert!(
        epp["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"]["http2_protocol_options"]
            .is_object()
    );
    assert_eq!(
        epp["transport_socket"]["name"],
        "envoy.transport_sockets.tls"
    );
    assert_eq!(
        epp["health_checks"][0]["grpc_health_check"]["service_name"],
        "envoy.service.ext_proc.v3.ExternalProcessor"
    );
    let address = &epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["port_value"], 9002);
    assert!(
        address["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("vllm-llama3-8b-instruct-epp."))
    );

    // The Deployment mounts that bootstrap and the Service exposes the listener.
    let deployment = one(&objects, |o| match o {
        Object::Deployment(d) => Some(d.as_ref()),
        _ => None,
    });
    let envoy = container(&deployment.spec.template);
    let args = args(envoy);
    let config_path = flag(&args, "-c").expect("-c");
    assert!(
        envoy
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| config_path == format!("{}/envoy.yaml", m.mount_path))
    );
    let listener_port = listeners
        .iter()
        .find(|l| l["name"] == "inference")
        .map(|l| l["address"]["socket_address"]["port_value"].clone())
        .expect("inference listener");
    assert_eq!(json!(port_of(envoy, "http")), listener_port);
}
