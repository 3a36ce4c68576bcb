//! The CRDs on disk match `switchyard crdgen`, and the generated schema carries upstream's
//! validation rules (so regenerating the files cannot silently drop one).
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use switchyard::k8s::crdgen;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("router-user has a parent")
        .to_path_buf()
}

/// Every directory that ships the CRDs.
fn crd_dirs() -> Vec<PathBuf> {
    vec![
        repo_root().join("deploy/crds"),
        repo_root().join("deploy/helm/switchyard/crds"),
    ]
}

#[test]
fn crd_files_match_crdgen() {
    let files = crdgen::crd_files();
    assert_eq!(files.len(), 2);
    for dir in crd_dirs() {
        for file in &files {
            let path = dir.join(&file.file_name);
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let generated = crdgen::crd_yaml(&file.crd).expect("render");
            assert!(
                on_disk == generated,
                "{} drifted from `switchyard crdgen`; regenerate with \
                 `cargo run -- crdgen --out-dir {}`",
                path.display(),
                dir.strip_prefix(repo_root()).unwrap_or(&dir).display()
            );
        }
        let yaml_files = std::fs::read_dir(&dir)
            .expect("crd dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
            .count();
        assert_eq!(
            yaml_files,
            files.len(),
            "stray CRD files in {}",
            dir.display()
        );
    }
}

#[test]
fn multi_document_output_parses_back() {
    let text = crdgen::crds_yaml().expect("render");
    let mut parsed = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: CustomResourceDefinition =
            serde::Deserialize::deserialize(doc).expect("a CRD document");
        parsed.push(crd);
    }
    let names: Vec<_> = parsed
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "inferencepools.inference.networking.k8s.io",
            "inferenceobjectives.inference.networking.x-k8s.io"
        ]
    );
}

fn root(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema")
}

fn prop<'a>(schema: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    path.split('.').fold(schema, |s, part| {
        if part == "[]" {
            match s.items.as_ref() {
                Some(JSONSchemaPropsOrArray::Schema(item)) => item,
                _ => panic!("no items at {path}"),
            }
        } else {
            s.properties
                .as_ref()
                .and_then(|p| p.get(part))
                .unwrap_or_else(|| panic!("no property {part} in {path}"))
        }
    })
}

fn rules(schema: &JSONSchemaProps) -> Vec<(String, Option<String>)> {
    schema
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| (r.rule.clone(), r.message.clone()))
        .collect()
}

fn assert_no_nullable(schema: &JSONSchemaProps, at: &str) {
    assert!(schema.nullable.is_none(), "nullable at {at}");
    for (name, child) in schema.properties.iter().flatten() {
        assert_no_nullable(child, &format!("{at}.{name}"));
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
        assert_no_nullable(item, &format!("{at}[]"));
    }
}

#[test]
fn pool_schema_has_upstream_validation() {
    let crd = &crdgen::crds()[0];
    assert_eq!(crd.spec.group, "inference.networking.k8s.io");
    assert_eq!(crd.spec.versions[0].name, "v1");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["infpool".to_string()][..])
    );
    assert!(
        crd.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("api-approved.kubernetes.io")),
        "a *.k8s.io group needs the api-approved annotation or the API server refuses the CRD"
    );
    let root = root(crd);
    assert_no_nullable(root, "");
    let spec = prop(root, "spec");
    assert_eq!(
        spec.required.as_deref(),
        Some(&["selector".to_string(), "targetPorts".to_string()][..])
    );

    let labels = prop(spec, "selector.matchLabels");
    assert_eq!(
        (labels.min_properties, labels.max_properties),
        (Some(1), Some(64))
    );
    match &labels.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(value)) => {
            assert_eq!(value.max_length, Some(63));
            assert!(value.pattern.is_some());
        }
        other => panic!("label values unchecked: {other:?}"),
    }

    let ports = prop(spec, "targetPorts");
    assert_eq!((ports.min_items, ports.max_items), (Some(1), Some(8)));
    assert_eq!(ports.x_kubernetes_list_type.as_deref(), Some("atomic"));
    assert_eq!(
        rules(ports),
        [(
            "self.all(p1, self.exists_one(p2, p1.number==p2.number))".to_string(),
            Some("port number must be unique".to_string())
        )]
    );
    let number = prop(ports, "[].number");
    assert_eq!((number.minimum, number.maximum), (Some(1.0), Some(65535.0)));

    let protocol = prop(spec, "appProtocol");
    assert_eq!(
        protocol.default.as_ref().map(|d| d.0.clone()),
        Some("http".into())
    );
    assert_eq!(protocol.enum_.as_ref().map(Vec::len), Some(2));

    let picker = prop(spec, "endpointPickerRef");
    assert_eq!(picker.required.as_deref(), Some(&["name".to_string()][..]));
    assert_eq!(
        rules(picker)[0].0,
        "self.kind != 'Service' || has(self.port)"
    );
    let failure = prop(picker, "failureMode");
    assert_eq!(
        failure.default.as_ref().map(|d| d.0.clone()),
        Some("FailClose".into())
    );
    assert_eq!(
        prop(picker, "kind").default.as_ref().map(|d| d.0.clone()),
        Some("Service".into())
    );
    assert_eq!(
        prop(picker, "group").default.as_ref().map(|d| d.0.clone()),
        Some("".into())
    );

    let parents = prop(root, "status.parents");
    assert_eq!(parents.max_items, Some(32));
    let conditions = prop(parents, "[].conditions");
    assert_eq!(conditions.max_items, Some(8));
    assert_eq!(conditions.x_kubernetes_list_type.as_deref(), Some("map"));
    assert!(prop(conditions, "[].reason").pattern.is_some());
    assert_eq!(
        prop(conditions, "[].status").enum_.as_ref().map(Vec::len),
        Some(3)
    );
}

#[test]
fn objective_schema_has_upstream_validation() {
    let crd = &crdgen::crds()[1];
    assert_eq!(crd.spec.group, "inference.networking.x-k8s.io");
    assert_eq!(crd.spec.versions[0].name, "v1alpha2");
    let columns: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Inference Pool", "Priority", "Age"]);
    let root = root(crd);
    assert_no_nullable(root, "");
    assert!(root.required.is_none(), "upstream does not require spec");
    let spec = prop(root, "spec");
    assert_eq!(spec.required.as_deref(), Some(&["poolRef".to_string()][..]));
    let priority = prop(spec, "priority");
    assert_eq!(priority.type_.as_deref(), Some("integer"));
    assert!(priority.format.is_none(), "a Go int has no format");
    let pool_ref = prop(spec, "poolRef");
    assert_eq!(
        prop(pool_ref, "group")
            .default
            .as_ref()
            .map(|d| d.0.clone()),
        Some("inference.networking.k8s.io".into())
    );
    assert_eq!(
        prop(pool_ref, "kind").default.as_ref().map(|d| d.0.clone()),
        Some("InferencePool".into())
    );
    let conditions = prop(root, "status.conditions");
    assert_eq!(conditions.max_items, Some(8));
    let default = conditions
        .default
        .as_ref()
        .expect("pending default")
        .0
        .clone();
    assert_eq!(default[0]["reason"], "Pending");
}
