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

/// Serves `router` on 127.0.0.1 (port chosen by the OS) until the test's runtime ends.
pub async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, service).await;
    });
    addr
}

/// A loopback address nothing listens on (bound, then released).
pub fn dead_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// What prometheus_client's exporters do with `?name[]=a&name[]=b`: only those samples.
/// `None` when the query asks for nothing.
pub fn restrict_to_names(page: &str, raw_query: Option<&str>) -> Option<String> {
    let names: Vec<&str> = raw_query?
        .split('&')
        .filter_map(|pair| {
            pair.strip_prefix("name%5B%5D=")
                .or_else(|| pair.strip_prefix("name[]="))
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    let kept: Vec<&str> = page
        .lines()
        .filter(|line| {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            !line.starts_with('#') && names.contains(&name)
        })
        .collect();
    Some(kept.join("\n") + "\n")
}
