//! Helpers shared by the integration tests under `tests/`.
#![allow(dead_code)]
use std::path::PathBuf;

/// Absolute path of a file under `tests/fixtures/`.
pub fn fixture_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(relative)
}

/// The text of a fixture; panics with the path when it is missing (a broken checkout).
pub fn fixture(relative: &str) -> String {
    let path = fixture_path(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read fixture {}: {err}", path.display()))
}

/// Replaces the value of every sample line whose metric name is exactly `name`.
pub fn set_value(text: &str, name: &str, value: f64) -> String {
    text.lines()
        .map(|line| {
            let is_sample = line.starts_with(name)
                && matches!(line.as_bytes().get(name.len()), Some(b'{' | b' '));
            match (is_sample, line.rfind(' ')) {
                (true, Some(space)) => format!("{} {value:?}", &line[..space]),
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
