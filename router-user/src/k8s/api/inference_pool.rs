//! `InferencePool` (`inference.networking.k8s.io/v1`): a set of model-server pods behind one
//! endpoint picker, field for field as the Gateway API Inference Extension defines it, with the
//! same OpenAPI validation (lengths, patterns, enums, defaults, CEL rules).
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::condition_list;
use super::fields::{
    CONTROLLER_NAME_PATTERN, GROUP_PATTERN, KIND_PATTERN, LABEL_VALUE_PATTERN, NAMESPACE_PATTERN,
    SERVICE_KIND,
};

/// The API group of `InferencePool`.
pub const POOL_GROUP: &str = "inference.networking.k8s.io";
/// The Gateway API group, the default of a status parent reference.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Most ports one pool may expose (one endpoint per pod and port: data-parallel ranks).
pub const MAX_TARGET_PORTS: usize = 8;
/// Label count bounds of the pool selector.
pub const MIN_SELECTOR_LABELS: usize = 1;
pub const MAX_SELECTOR_LABELS: usize = 64;

/// Desired state of an InferencePool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    plural = "inferencepools",
    singular = "inferencepool",
    shortname = "infpool",
    namespaced,
    status = "InferencePoolStatus",
    derive = "PartialEq",
    doc = "InferencePool is the Schema for the InferencePools API: model-server pods selected by labels, the ports they serve on, and the endpoint picker that routes to them.",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Selector picks the pods of this pool by their labels, in the pool's namespace only. It is
    /// deliberately as simple as a Service selector.
    pub selector: LabelSelector,

    /// TargetPorts lists the ports the pool's pods serve on. Each port of each pod is a separate
    /// endpoint for the endpoint picker, addressed as podIP:port.
    #[schemars(length(min = 1, max = 8), extend("x-kubernetes-list-type" = "atomic"))]
    #[x_kube(validation = Rule::new("self.all(p1, self.exists_one(p2, p1.number==p2.number))").message("port number must be unique"))]
    pub target_ports: Vec<Port>,

    /// AppProtocol is the application protocol of every target port: "http" (HTTP/1.1, the
    /// default) or "kubernetes.io/h2c" (HTTP/2 over cleartext).
    #[serde(default)]
    pub app_protocol: AppProtocol,

    /// EndpointPickerRef points at the endpoint picker extension that routes for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_picker_ref: Option<EndpointPickerRef>,
}

/// A label selector restricted to exact matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// MatchLabels holds the {key, value} pairs a pod must all carry to be selected.
    #[schemars(extend(
        "minProperties" = 1,
        "maxProperties" = 64,
        "additionalProperties" = {
            "type": "string",
            "minLength": 0,
            "maxLength": 63,
            "pattern": LABEL_VALUE_PATTERN,
            "description": "A label value: at most 63 characters, empty or alphanumeric at both ends with '-', '_', '.' and alphanumerics between."
        }
    ))]
    pub match_labels: BTreeMap<String, String>,
}

/// A network port of the pool's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    /// Number is the port number, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: i32,
}

/// The application protocol spoken on the target ports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    // HTTP/1.1 (the default).
    #[default]
    #[serde(rename = "http")]
    Http,
    // HTTP/2 over cleartext.
    #[serde(rename = "kubernetes.io/h2c")]
    H2c,
}

impl AppProtocol {
    /// The value as written in the resource.
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::H2c => "kubernetes.io/h2c",
        }
    }
}

/// A reference to the endpoint picker extension.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'Service' || has(self.port)").message("port is required when kind is 'Service' or unspecified (defaults to 'Service')"))]
pub struct EndpointPickerRef {
    /// Group is the API group of the referent; "" (the default) is the core group.
    #[serde(default)]
    #[schemars(length(min = 0, max = 253), regex(pattern = GROUP_PATTERN))]
    pub group: String,

    /// Kind is the kind of the referent, "Service" by default. ExternalName Services are not
    /// supported.
    #[serde(default = "service_kind")]
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN))]
    pub kind: String,

    /// Name is the name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Port is the endpoint picker's port: for a Service the service port (not the target
    /// port), required in that case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,

    /// FailureMode says what the gateway does when the endpoint picker does not answer:
    /// FailOpen routes without it, FailClose (the default) fails the request.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

fn service_kind() -> String {
    SERVICE_KIND.to_string()
}

/// What the gateway does when the endpoint picker is unavailable.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FailureMode {
    // Route the request without the picker.
    FailOpen,
    // Fail the request (the default).
    #[default]
    FailClose,
}

/// Observed state of an InferencePool, written by the gateways that use it (not by the EPP).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolStatus {
    /// Parents lists the gateways that use this pool and the pool's status with each of them
    /// (at most 32; empty when no parent uses it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub parents: Vec<ParentStatus>,
}

/// The pool's status with one parent (usually a Gateway).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// Conditions of the pool with this parent: "Accepted" and "ResolvedRefs".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "condition_list")]
    pub conditions: Vec<Condition>,

    /// ParentRef names the parent this status belongs to.
    pub parent_ref: ParentReference,

    /// ControllerName is the DOMAIN/PATH name of the controller that wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = CONTROLLER_NAME_PATTERN))]
    pub controller_name: Option<String>,
}

/// A reference to a parent resource, a Gateway by default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Group of the parent, "gateway.networking.k8s.io" by default.
    #[serde(default = "gateway_group")]
    #[schemars(length(min = 0, max = 253), regex(pattern = GROUP_PATTERN))]
    pub group: String,

    /// Kind of the parent, "Gateway" by default.
    #[serde(default = "gateway_kind")]
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN))]
    pub kind: String,

    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Namespace of the parent; the pool's own namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAMESPACE_PATTERN))]
    pub namespace: Option<String>,
}

fn gateway_group() -> String {
    GATEWAY_GROUP.to_string()
}

fn gateway_kind() -> String {
    "Gateway".to_string()
}
