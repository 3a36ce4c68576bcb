//! In-code validation of the Inference Extension resources.
//!
//! The CRDs make the API server enforce these rules, but the EPP must not trust that: a cluster
//! may run an older CRD, a CRD installed by someone else, or objects stored before a rule was
//! tightened. So everything the EPP reads goes through [`parse_pool`] / [`parse_objective`],
//! which decode without panicking and check every rule of the schema, naming the field at fault.
use std::collections::HashSet;
use std::fmt;

use serde::de::DeserializeOwned;

use super::fields::{
    SERVICE_KIND, check_group, check_kind, check_label_key, check_label_value, check_object_name,
    check_port_number,
};
use super::inference_objective::{InferenceObjective, InferenceObjectiveSpec};
use super::inference_pool::{
    InferencePool, InferencePoolSpec, MAX_SELECTOR_LABELS, MAX_TARGET_PORTS, MIN_SELECTOR_LABELS,
};

/// One broken rule: the field (a JSON path such as `spec.targetPorts[1].number`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every rule a resource breaks (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<FieldError>);

impl SpecErrors {
    /// Whether some error names exactly this field.
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors while walking a spec.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.0.push(FieldError::new(field, message));
        }
    }

    fn into_result(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(self.0))
        }
    }
}

/// Checks an InferencePool spec against every rule of the upstream schema (selector size and
/// labels, 1-8 unique valid target ports, the endpoint picker reference and its CEL rule).
pub fn validate_pool_spec(spec: &InferencePoolSpec) -> Result<(), SpecErrors> {
    let mut errors = Errors::default();

    let labels = &spec.selector.match_labels;
    if !(MIN_SELECTOR_LABELS..=MAX_SELECTOR_LABELS).contains(&labels.len()) {
        errors.check(
            "spec.selector.matchLabels",
            Err(format!(
                "must hold {MIN_SELECTOR_LABELS} to {MAX_SELECTOR_LABELS} labels (has {})",
                labels.len()
            )),
        );
    }
    for (key, value) in labels {
        let field = format!("spec.selector.matchLabels[{key:?}]");
        errors.check(
            field.clone(),
            check_label_key(key).map_err(|e| format!("invalid label key: {e}")),
        );
        errors.check(
            field,
            check_label_value(value).map_err(|e| format!("invalid label value: {e}")),
        );
    }

    let ports = &spec.target_ports;
    if ports.is_empty() || ports.len() > MAX_TARGET_PORTS {
        errors.check(
            "spec.targetPorts",
            Err(format!(
                "must hold 1 to {MAX_TARGET_PORTS} ports (has {})",
                ports.len()
            )),
        );
    }
    let mut seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.targetPorts[{i}].number");
        errors.check(field.clone(), check_port_number(port.number));
        if !seen.insert(port.number) {
            errors.check(
                field,
                Err(format!(
                    "port number {} is listed twice (must be unique)",
                    port.number
                )),
            );
        }
    }

    if let Some(picker) = &spec.endpoint_picker_ref {
        errors.check("spec.endpointPickerRef.group", check_group(&picker.group));
        errors.check("spec.endpointPickerRef.kind", check_kind(&picker.kind));
        errors.check(
            "spec.endpointPickerRef.name",
            check_object_name(&picker.name),
        );
        match &picker.port {
            Some(port) => errors.check(
                "spec.endpointPickerRef.port.number",
                check_port_number(port.number),
            ),
            None if picker.kind == SERVICE_KIND => errors.check(
                "spec.endpointPickerRef.port",
                Err("port is required when kind is 'Service' or unspecified (defaults to 'Service')".into()),
            ),
            None => {}
        }
    }
    errors.into_result()
}

/// Checks an InferenceObjective spec (the pool reference's group, kind and name).
pub fn validate_objective_spec(spec: &InferenceObjectiveSpec) -> Result<(), SpecErrors> {
    let mut errors = Errors::default();
    let pool_ref = &spec.pool_ref;
    // Upstream bounds this group's length but not from below: "" (core) is a legal value.
    errors.check("spec.poolRef.group", check_group(&pool_ref.group));
    errors.check("spec.poolRef.kind", check_kind(&pool_ref.kind));
    errors.check("spec.poolRef.name", check_object_name(&pool_ref.name));
    errors.into_result()
}

/// Decodes an InferencePool from JSON (as read from the API server) and validates its spec.
pub fn parse_pool(value: serde_json::Value) -> Result<InferencePool, SpecErrors> {
    let pool: InferencePool = decode(value)?;
    validate_pool_spec(&pool.spec)?;
    Ok(pool)
}

/// Decodes an InferenceObjective from JSON and validates its spec.
pub fn parse_objective(value: serde_json::Value) -> Result<InferenceObjective, SpecErrors> {
    let objective: InferenceObjective = decode(value)?;
    validate_objective_spec(&objective.spec)?;
    Ok(objective)
}

/// Decodes with the failing field's path in the error (serde alone only says what, not where).
fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, SpecErrors> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "(root)".to_string()
        } else {
            path
        };
        SpecErrors(vec![FieldError::new(field, err.into_inner().to_string())])
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pool(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": spec,
        })
    }

    fn good_spec() -> serde_json::Value {
        json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
        })
    }

    #[test]
    fn a_valid_pool_parses_with_defaults() {
        let pool = parse_pool(pool(good_spec())).expect("valid");
        assert_eq!(pool.spec.app_protocol.as_str(), "http");
        let picker = pool.spec.endpoint_picker_ref.expect("picker");
        assert_eq!(picker.kind, "Service");
        assert_eq!(picker.group, "");
        assert_eq!(picker.failure_mode, super::super::FailureMode::FailClose);
    }

    fn errors_of(spec: serde_json::Value) -> SpecErrors {
        parse_pool(pool(spec)).expect_err("must be rejected")
    }

    #[test]
    fn empty_selector_is_rejected() {
        let mut spec = good_spec();
        spec["selector"]["matchLabels"] = json!({});
        let errors = errors_of(spec);
        assert!(errors.mentions("spec.selector.matchLabels"), "{errors}");
    }

    #[test]
    fn too_many_labels_are_rejected() {
        let mut spec = good_spec();
        let labels: serde_json::Map<_, _> =
            (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
        spec["selector"]["matchLabels"] = serde_json::Value::Object(labels);
        assert!(errors_of(spec).mentions("spec.selector.matchLabels"));
    }

    #[test]
    fn bad_label_key_and_value_name_the_label() {
        let mut spec = good_spec();
        spec["selector"]["matchLabels"] = json!({"bad key": "ok", "app": "-bad"});
        let errors = errors_of(spec);
        assert!(
            errors.mentions("spec.selector.matchLabels[\"bad key\"]"),
            "{errors}"
        );
        assert!(
            errors.mentions("spec.selector.matchLabels[\"app\"]"),
            "{errors}"
        );
    }

    #[test]
    fn port_count_range_and_uniqueness() {
        let mut spec = good_spec();
        spec["targetPorts"] = json!([]);
        assert!(errors_of(spec.clone()).mentions("spec.targetPorts"));
        spec["targetPorts"] = json!(
            (1..=9)
                .map(|p| json!({"number": 8000 + p}))
                .collect::<Vec<_>>()
        );
        assert!(errors_of(spec.clone()).mentions("spec.targetPorts"));
        spec["targetPorts"] = json!([{"number": 8000}, {"number": 0}, {"number": 8000}]);
        let errors = errors_of(spec);
        assert!(errors.mentions("spec.targetPorts[1].number"), "{errors}");
        assert!(errors.mentions("spec.targetPorts[2].number"), "{errors}");
        assert!(errors.to_string().contains("listed twice"), "{errors}");
    }

    #[test]
    fn service_picker_needs_a_port() {
        let mut spec = good_spec();
        spec["endpointPickerRef"] = json!({"name": "epp"});
        let errors = errors_of(spec.clone());
        assert!(errors.mentions("spec.endpointPickerRef.port"), "{errors}");
        // Another kind may leave the port out.
        spec["endpointPickerRef"] =
            json!({"name": "epp", "kind": "Backend", "group": "example.com"});
        assert!(parse_pool(pool(spec)).is_ok());
    }

    #[test]
    fn picker_reference_fields_are_checked() {
        let mut spec = good_spec();
        spec["endpointPickerRef"] =
            json!({"name": "", "group": "Bad/Group", "kind": "9x", "port": {"number": 70000}});
        let errors = errors_of(spec);
        for field in [
            "spec.endpointPickerRef.name",
            "spec.endpointPickerRef.group",
            "spec.endpointPickerRef.kind",
            "spec.endpointPickerRef.port.number",
        ] {
            assert!(errors.mentions(field), "{field} missing from {errors}");
        }
    }

    #[test]
    fn undecodable_fields_are_named() {
        let mut spec = good_spec();
        spec["appProtocol"] = json!("grpc");
        let errors = errors_of(spec);
        assert!(errors.mentions("spec.appProtocol"), "{errors}");
        assert!(errors.to_string().contains("grpc"), "{errors}");

        let mut spec = good_spec();
        spec["endpointPickerRef"]["failureMode"] = json!("Sometimes");
        assert!(errors_of(spec).mentions("spec.endpointPickerRef.failureMode"));

        let mut spec = good_spec();
        spec.as_object_mut().unwrap().remove("targetPorts");
        let errors = errors_of(spec);
        assert!(errors.to_string().contains("targetPorts"), "{errors}");
    }

    #[test]
    fn objectives() {
        let objective = |spec: serde_json::Value| {
            json!({
                "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "kind": "InferenceObjective",
                "metadata": {"name": "o", "namespace": "ns"},
                "spec": spec,
            })
        };
        let ok = parse_objective(objective(json!({"priority": -3, "poolRef": {"name": "p"}})))
            .expect("valid");
        assert_eq!(ok.spec.priority, Some(-3));
        assert_eq!(ok.spec.pool_ref.group, "inference.networking.k8s.io");
        assert_eq!(ok.spec.pool_ref.kind, "InferencePool");

        let errors = parse_objective(objective(json!({"poolRef": {"name": "", "kind": "a/b"}})))
            .expect_err("invalid");
        assert!(errors.mentions("spec.poolRef.name"), "{errors}");
        assert!(errors.mentions("spec.poolRef.kind"), "{errors}");

        let errors = parse_objective(objective(
            json!({"priority": "high", "poolRef": {"name": "p"}}),
        ))
        .expect_err("invalid");
        assert!(errors.mentions("spec.priority"), "{errors}");

        let errors = parse_objective(objective(
            json!({"priority": 1u64 << 40, "poolRef": {"name": "p"}}),
        ))
        .expect_err("out of range");
        assert!(errors.mentions("spec.priority"), "{errors}");
    }
}
