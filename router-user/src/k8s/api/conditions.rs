//! The schema of `metav1.Condition` lists as Kubernetes' own CRD generator writes it.
//!
//! k8s-openapi's `Condition` schema carries the field types only; controller-gen adds the
//! `metav1.Condition` validation markers (lengths, patterns, the status enum) and the list is a
//! map keyed by `type`. The upstream CRDs have both, so ours do too.
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::fields::{CONDITION_REASON_PATTERN, CONDITION_TYPE_PATTERN};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// At most this many conditions per list (upstream's limit).
pub const MAX_CONDITIONS: usize = 8;

/// A list of conditions keyed by `type`, at most [`MAX_CONDITIONS`] long.
pub fn condition_list(generator: &mut SchemaGenerator) -> Schema {
    let mut item = generator.subschema_for::<Condition>();
    add_condition_validation(&mut item);
    json_schema!({
        "type": "array",
        "items": item,
        "maxItems": MAX_CONDITIONS,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

fn add_condition_validation(item: &mut Schema) {
    let Some(properties) = item.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    let mut extend = |field: &str, extra: Value| {
        if let (Some(Value::Object(target)), Value::Object(extra)) =
            (properties.get_mut(field), extra)
        {
            target.extend(extra);
        }
    };
    extend("message", json!({"maxLength": 32768}));
    extend("observedGeneration", json!({"minimum": 0}));
    extend(
        "reason",
        json!({"minLength": 1, "maxLength": 1024, "pattern": CONDITION_REASON_PATTERN}),
    );
    extend("status", json!({"enum": ["True", "False", "Unknown"]}));
    extend(
        "type",
        json!({"maxLength": 316, "pattern": CONDITION_TYPE_PATTERN}),
    );
}
