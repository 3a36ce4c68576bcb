//! Field rules shared by the Inference Extension resources: the regular expressions and length
//! limits the upstream CRDs put on API groups, kinds, names, namespaces, label keys and values.
//!
//! The same constants feed the generated OpenAPI schema (through schemars attributes) and the
//! in-code validation, so the API server and the EPP apply one rule set.
use std::sync::LazyLock;

use regex::Regex;

/// An API group: empty (the core group) or an RFC 1123 subdomain.
pub const GROUP_PATTERN: &str =
    r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Kubernetes kind in CamelCase.
pub const KIND_PATTERN: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
/// A namespace: an RFC 1123 label.
pub const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A label value: empty, or alphanumeric at both ends with `-_.` inside.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// A status writer's name: `DOMAIN/PATH`.
pub const CONTROLLER_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";
/// `metav1.Condition.reason`.
pub const CONDITION_REASON_PATTERN: &str = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";
/// `metav1.Condition.type`: CamelCase, optionally prefixed by a domain.
pub const CONDITION_TYPE_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

pub const GROUP_MAX_LEN: usize = 253;
pub const KIND_MAX_LEN: usize = 63;
pub const OBJECT_NAME_MAX_LEN: usize = 253;
pub const NAMESPACE_MAX_LEN: usize = 63;
pub const LABEL_VALUE_MAX_LEN: usize = 63;
/// The name part of a label key (after the optional `prefix/`).
pub const LABEL_NAME_MAX_LEN: usize = 63;
pub const LABEL_PREFIX_MAX_LEN: usize = 253;

/// The core-group `Service` kind an endpoint picker reference defaults to.
pub const SERVICE_KIND: &str = "Service";

fn compiled(pattern: &'static str) -> Regex {
    // The patterns are compile-time constants covered by unit tests; failing here is a bug.
    Regex::new(pattern).unwrap_or_else(|err| panic!("invalid built-in pattern {pattern}: {err}"))
}

static GROUP: LazyLock<Regex> = LazyLock::new(|| compiled(GROUP_PATTERN));
static KIND: LazyLock<Regex> = LazyLock::new(|| compiled(KIND_PATTERN));
static NAMESPACE: LazyLock<Regex> = LazyLock::new(|| compiled(NAMESPACE_PATTERN));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_VALUE_PATTERN));

/// Checks an API group; the error says what is wrong with it.
pub fn check_group(value: &str) -> Result<(), String> {
    check_len(value, 0, GROUP_MAX_LEN)?;
    check_pattern(
        value,
        &GROUP,
        "an empty string or a lower-case RFC 1123 subdomain",
    )
}

/// Checks a kind.
pub fn check_kind(value: &str) -> Result<(), String> {
    check_len(value, 1, KIND_MAX_LEN)?;
    check_pattern(value, &KIND, "a letter followed by letters, digits or '-'")
}

/// Checks an object name (upstream only bounds its length).
pub fn check_object_name(value: &str) -> Result<(), String> {
    check_len(value, 1, OBJECT_NAME_MAX_LEN)
}

/// Checks a namespace name.
pub fn check_namespace(value: &str) -> Result<(), String> {
    check_len(value, 1, NAMESPACE_MAX_LEN)?;
    check_pattern(value, &NAMESPACE, "a lower-case RFC 1123 label")
}

/// Checks a label value.
pub fn check_label_value(value: &str) -> Result<(), String> {
    check_len(value, 0, LABEL_VALUE_MAX_LEN)?;
    check_pattern(
        value,
        &LABEL_VALUE,
        "empty, or alphanumeric at both ends with only '-', '_', '.' and alphanumerics inside",
    )
}

/// Checks a label key: `[prefix/]name`, the prefix a DNS subdomain, the name like a label value
/// but not empty (Kubernetes' "qualified name").
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("the prefix before '/' must not be empty".into());
        }
        check_len(prefix, 1, LABEL_PREFIX_MAX_LEN).map_err(|e| format!("prefix: {e}"))?;
        check_pattern(prefix, &GROUP, "a lower-case RFC 1123 subdomain")
            .map_err(|e| format!("prefix: {e}"))?;
    }
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    check_len(name, 1, LABEL_NAME_MAX_LEN).map_err(|e| format!("name part: {e}"))?;
    check_pattern(
        name,
        &LABEL_VALUE,
        "alphanumeric at both ends with only '-', '_', '.' and alphanumerics inside",
    )
    .map_err(|e| format!("name part: {e}"))
}

/// Checks a port number: 1 to 65535.
pub fn check_port_number(number: i32) -> Result<(), String> {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(format!("{number} is not a port number (1 to 65535)"))
    }
}

fn check_len(value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len < min {
        Err(format!("must be at least {min} characters long"))
    } else if len > max {
        Err(format!("must be at most {max} characters long (is {len})"))
    } else {
        Ok(())
    }
}

fn check_pattern(value: &str, regex: &Regex, what: &str) -> Result<(), String> {
    if regex.is_match(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for pattern in [
            GROUP_PATTERN,
            KIND_PATTERN,
            NAMESPACE_PATTERN,
            LABEL_VALUE_PATTERN,
            CONTROLLER_NAME_PATTERN,
            CONDITION_REASON_PATTERN,
            CONDITION_TYPE_PATTERN,
        ] {
            assert!(Regex::new(pattern).is_ok(), "{pattern}");
        }
    }

    #[test]
    fn groups() {
        assert!(check_group("").is_ok());
        assert!(check_group("inference.networking.k8s.io").is_ok());
        assert!(check_group("example.com/bar").is_err());
        assert!(check_group("Upper.case").is_err());
        assert!(check_group(&"a".repeat(254)).is_err());
    }

    #[test]
    fn kinds_and_names() {
        assert!(check_kind("Service").is_ok());
        assert!(check_kind("").is_err());
        assert!(check_kind("invalid/kind").is_err());
        assert!(check_kind("9Lives").is_err());
        assert!(check_object_name("").is_err());
        assert!(check_object_name("anything.goes-here").is_ok());
        assert!(check_namespace("default").is_ok());
        assert!(check_namespace("example.com").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for good in [
            "app",
            "app.kubernetes.io/name",
            "example.com/path.html",
            "a_b",
        ] {
            assert!(check_label_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/app",
            "example.com/",
            "example~",
            "-app",
            "Bad_Prefix/app",
            "a/b/c",
        ] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_key(&"a".repeat(64)).is_err());
        for good in ["", "MyValue", "my.name", "123-my-value"] {
            assert!(check_label_value(good).is_ok(), "{good}");
        }
        for bad in ["-x", "x-", "a b", &"v".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn controller_names() {
        let re = Regex::new(CONTROLLER_NAME_PATTERN).unwrap();
        assert!(re.is_match("example.net/gateway-controller"));
        assert!(!re.is_match("no-slash"));
    }

    #[test]
    fn ports() {
        assert!(check_port_number(1).is_ok());
        assert!(check_port_number(65535).is_ok());
        assert!(check_port_number(0).is_err());
        assert!(check_port_number(65536).is_err());
    }
}
