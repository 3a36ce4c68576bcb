//! A fake Kubernetes API server for watcher tests: the kube-rs `ApiServerVerifier` pattern
//! (a `tower_test::mock` service handed to `kube::Client::new`), grown into a small in-memory
//! API server that answers list and watch requests the way the real one does: lists carry a
//! resourceVersion, watches replay the changes after the version they start from and then
//! stream live ADDED / MODIFIED / DELETED events, field selectors filter both.
//!
//! Every request is recorded, so tests also assert which API calls the code makes (the RBAC
//! rules in deploy/ must cover exactly those).
#![allow(dead_code)]

pub mod gotmpl;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// The resources the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    InferencePools,
    InferenceObjectives,
}

impl Resource {
    /// (API group, resource) as RBAC rules name them.
    pub fn rbac(self) -> (&'static str, &'static str) {
        match self {
            Resource::Pods => ("", "pods"),
            Resource::InferencePools => ("inference.networking.k8s.io", "inferencepools"),
            Resource::InferenceObjectives => {
                ("inference.networking.x-k8s.io", "inferenceobjectives")
            }
        }
    }
}

/// One API call the client made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `list` or `watch` (the RBAC verb).
    pub verb: &'static str,
    pub resource: Resource,
    /// None for a cluster-wide call.
    pub namespace: Option<String>,
    pub field_selector: Option<String>,
}

struct Watch {
    resource: Resource,
    namespace: Option<String>,
    field_selector: Option<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<(u64, Resource, &'static str, Value)>,
    watches: Vec<Watch>,
    calls: Vec<Call>,
    unexpected: Vec<String>,
    failing_lists: BTreeMap<Resource, usize>,
}

/// The fake API server. Cloning shares it.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl FakeApiServer {
    /// A client talking to a new fake, and the fake (its task runs until the client is gone).
    pub fn start() -> (Client, FakeApiServer) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let fake = FakeApiServer::default();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                respond.send_response(server.answer(request));
            }
        });
        (Client::new(service, "default"), fake)
    }

    /// Creates or replaces an object (ADDED or MODIFIED to matching watches).
    pub fn apply(&self, resource: Resource, mut object: Value) {
        let mut state = self.state.lock();
        state.resource_version += 1;
        let rv = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(resource, &object);
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.objects.insert(key, object.clone());
        state.emit(rv, resource, kind, object);
    }

    /// Applies [`pod`]`(args)`.
    pub fn apply_pod(
        &self,
        name: &str,
        namespace: &str,
        ip: Option<&str>,
        ready: bool,
        labels: Value,
    ) {
        self.apply(Resource::Pods, pod(name, namespace, ip, ready, labels));
    }

    /// Applies [`pool`]`(args)`.
    pub fn apply_pool(&self, name: &str, namespace: &str, spec: Value) {
        self.apply(Resource::InferencePools, pool(name, namespace, spec));
    }

    /// Applies [`objective`]`(args)`.
    pub fn apply_objective(&self, name: &str, namespace: &str, pool: &str, priority: Option<i64>) {
        self.apply(
            Resource::InferenceObjectives,
            objective(name, namespace, pool, priority),
        );
    }

    /// Deletes an object (DELETED to matching watches). Returns whether it existed.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut state = self.state.lock();
        let key = (resource, namespace.to_string(), name.to_string());
        let Some(mut object) = state.objects.remove(&key) else {
            return false;
        };
        state.resource_version += 1;
        let rv = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.emit(rv, resource, "DELETED", object);
        true
    }

    /// The next `count` list requests for `resource` fail with HTTP 500.
    pub fn fail_lists(&self, resource: Resource, count: usize) {
        self.state.lock().failing_lists.insert(resource, count);
    }

    /// Every list/watch call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    /// Requests the fake could not map to a resource (method and URI).
    pub fn unexpected(&self) -> Vec<String> {
        self.state.lock().unexpected.clone()
    }

    /// Open watch streams.
    pub fn open_watches(&self) -> usize {
        let mut state = self.state.lock();
        state.watches.retain(|w| !w.tx.is_closed());
        state.watches.len()
    }

    fn answer(&self, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let target = (method == http::Method::GET)
            .then(|| parse_target(uri.path()))
            .flatten();
        let Some((resource, namespace)) = target else {
            self.state.lock().unexpected.push(format!("{method} {uri}"));
            return status(StatusCode::NOT_FOUND, "not served by the fake");
        };
        let query = parse_query(uri.query().unwrap_or_default());
        let field_selector = query
            .get("fieldSelector")
            .cloned()
            .filter(|s| !s.is_empty());
        if query.get("labelSelector").is_some_and(|s| !s.is_empty()) {
            self.state
                .lock()
                .unexpected
                .push(format!("label selector in {uri}"));
        }
        let parsed_selector = field_selector.as_deref().map(|s| {
            let (k, v) = s.split_once('=').unwrap_or((s, ""));
            (k.to_string(), v.to_string())
        });
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let mut state = self.state.lock();
        state.calls.push(Call {
            verb: if watching { "watch" } else { "list" },
            resource,
            namespace: namespace.clone(),
            field_selector,
        });
        if watching {
            let since: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded_channel();
            let watch = Watch {
                resource,
                namespace,
                field_selector: parsed_selector,
                tx,
            };
            for (rv, res, kind, object) in &state.history {
                if *rv > since && watch.matches(*res, object) {
                    let _ = watch.tx.send(event_line(kind, object));
                }
            }
            state.watches.push(watch);
            let body = StreamBody::new(
                UnboundedReceiverStream::new(rx).map(|line| Ok::<_, Infallible>(Frame::data(line))),
            );
            return Response::new(BodyExt::boxed_unsync(body));
        }
        if let Some(remaining) = state.failing_lists.get_mut(&resource)
            && *remaining > 0
        {
            *remaining -= 1;
            return status(StatusCode::INTERNAL_SERVER_ERROR, "injected list failure");
        }
        let probe = Watch {
            resource,
            namespace,
            field_selector: parsed_selector,
            tx: mpsc::unbounded_channel().0,
        };
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((res, _, _), object)| probe.matches(*res, object))
            .map(|(_, object)| object.clone())
            .collect();
        let list = json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": state.resource_version.to_string()},
            "items": items,
        });
        Response::new(full(list.to_string()))
    }
}

impl State {
    fn emit(&mut self, rv: u64, resource: Resource, kind: &'static str, object: Value) {
        self.watches.retain(|w| !w.tx.is_closed());
        for watch in &self.watches {
            if watch.matches(resource, &object) {
                let _ = watch.tx.send(event_line(kind, &object));
            }
        }
        self.history.push((rv, resource, kind, object));
    }
}

impl Watch {
    fn matches(&self, resource: Resource, object: &Value) -> bool {
        if resource != self.resource {
            return false;
        }
        if let Some(ns) = &self.namespace
            && object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                != Some(ns.as_str())
        {
            return false;
        }
        match &self.field_selector {
            None => true,
            Some((field, value)) => {
                let pointer = format!("/{}", field.replace('.', "/"));
                object.pointer(&pointer).and_then(Value::as_str) == Some(value.as_str())
            }
        }
    }
}

fn key_of(resource: Resource, object: &Value) -> (Resource, String, String) {
    let field = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (
        resource,
        field("/metadata/namespace"),
        field("/metadata/name"),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn full(text: String) -> ResponseBody {
    BodyExt::boxed_unsync(Full::new(Bytes::from(text)))
}

fn status(code: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "InternalError", "code": code.as_u16(),
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response
}

/// `(resource, namespace)` of a collection path.
fn parse_target(path: &str) -> Option<(Resource, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "pods"] => Some((Resource::Pods, None)),
        ["api", "v1", "namespaces", ns, "pods"] => Some((Resource::Pods, Some(ns.to_string()))),
        [
            "apis",
            "inference.networking.k8s.io",
            "v1",
            "namespaces",
            ns,
            "inferencepools",
        ] => Some((Resource::InferencePools, Some(ns.to_string()))),
        [
            "apis",
            "inference.networking.x-k8s.io",
            "v1alpha2",
            "namespaces",
            ns,
            "inferenceobjectives",
        ] => Some((Resource::InferenceObjectives, Some(ns.to_string()))),
        _ => None,
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the watched value satisfies `pred` (fails the test after 10 s).
pub async fn wait_for<T, F>(rx: &mut tokio::sync::watch::Receiver<T>, what: &str, pred: F) -> T
where
    T: Clone + std::fmt::Debug,
    F: FnMut(&T) -> bool,
{
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        rx.wait_for(pred).await.map(|value| value.clone())
    })
    .await;
    match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => panic!("watcher stopped while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last value: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Polls `condition` until it holds (fails the test after 10 s).
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pod object as the API server returns it.
pub fn pod(name: &str, namespace: &str, ip: Option<&str>, ready: bool, labels: Value) -> Value {
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "engine", "image": "vllm"}]},
        "status": status,
    })
}

/// An InferencePool object.
pub fn pool(name: &str, namespace: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": spec,
    })
}

/// An InferenceObjective object.
pub fn objective(name: &str, namespace: &str, pool: &str, priority: Option<i64>) -> Value {
    let mut spec = json!({"poolRef": {"name": pool}});
    if let Some(p) = priority {
        spec["priority"] = json!(p);
    }
    json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}
