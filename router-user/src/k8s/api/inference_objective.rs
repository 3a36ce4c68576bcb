//! `InferenceObjective` (`inference.networking.x-k8s.io/v1alpha2`): the priority of one kind of
//! request served by a pool, as the Gateway API Inference Extension defined it.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::conditions::condition_list;
use super::fields::{GROUP_PATTERN, KIND_PATTERN};
use super::inference_pool::POOL_GROUP;

/// The API group of `InferenceObjective`.
pub const OBJECTIVE_GROUP: &str = "inference.networking.x-k8s.io";
/// The kind an objective's pool reference points at by default.
pub const POOL_KIND: &str = "InferencePool";

/// Desired state of an InferenceObjective: how important its requests are compared with other
/// requests to the same pool. Owned by the people who run the workload.
// The three printer columns repeat `type_ = "string"`-style keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha2",
    kind = "InferenceObjective",
    plural = "inferenceobjectives",
    singular = "inferenceobjective",
    namespaced,
    status = "InferenceObjectiveStatus",
    derive = "PartialEq",
    doc = "InferenceObjective is the Schema for the InferenceObjectives API: the priority of a class of requests to an InferencePool.",
    printcolumn(
        name = "Inference Pool",
        type_ = "string",
        json_path = ".spec.poolRef.name"
    ),
    printcolumn(name = "Priority", type_ = "string", json_path = ".spec.priority"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceObjectiveSpec {
    /// Priority says how important these requests are compared with others in the same pool:
    /// higher is more critical, negative values are allowed (sheddable). Unset counts as 0. Under
    /// scarcity, higher priorities are always served first; fairness applies within one priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = integer_without_format)]
    pub priority: Option<i32>,

    /// PoolRef names the InferencePool these requests go to, in the same namespace.
    pub pool_ref: PoolObjectReference,
}

/// Upstream declares `priority` as a Go `int`: an integer with no format.
fn integer_without_format(schema: &mut schemars::Schema) {
    schema.remove("format");
}

/// A reference to an InferencePool in the referrer's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolObjectReference {
    /// Group of the referent, "inference.networking.k8s.io" by default.
    #[serde(default = "pool_group")]
    #[schemars(length(max = 253), regex(pattern = GROUP_PATTERN))]
    pub group: String,

    /// Kind of the referent, "InferencePool" by default.
    #[serde(default = "pool_kind")]
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN))]
    pub kind: String,

    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn pool_group() -> String {
    POOL_GROUP.to_string()
}

fn pool_kind() -> String {
    POOL_KIND.to_string()
}

/// Observed state of an InferenceObjective.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceObjectiveStatus {
    /// Conditions of the objective; "Accepted" is the known type.
    #[serde(default = "pending_conditions")]
    #[schemars(schema_with = "objective_conditions")]
    pub conditions: Vec<Condition>,
}

impl Default for InferenceObjectiveStatus {
    fn default() -> Self {
        Self {
            conditions: pending_conditions(),
        }
    }
}

/// The condition upstream's schema defaults a new objective's status to.
fn pending_conditions() -> Vec<Condition> {
    vec![Condition {
        type_: "Ready".into(),
        status: "Unknown".into(),
        reason: "Pending".into(),
        message: "Waiting for controller".into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }]
}

fn objective_conditions(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = condition_list(generator);
    if let Ok(default) = serde_json::to_value(pending_conditions()) {
        schema.insert("default".into(), default);
    }
    schema
}
