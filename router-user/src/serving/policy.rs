//! Per-request policy shared by the endpoint picker and the proxy: which model a request really
//! targets (rewrite map), how important it is (InferenceObjective priorities), and the header
//! names of the endpoint-picker protocol that both honour.
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The picked endpoint, `ip:port` (header and `envoy.lb` metadata key).
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Every header starting with this belongs to the gateway, never to the client: client-supplied
/// ones are removed (a client must not steer its request or spoof the served endpoint).
pub const DESTINATION_HEADER_PREFIX: &str = "x-gateway-destination-endpoint";
/// Request header naming the InferenceObjective (GIE), and llm-d's newer spelling.
pub const OBJECTIVE_HEADERS: [&str; 2] = [
    "x-gateway-inference-objective",
    "x-llm-d-inference-objective",
];
/// Response header telling why a request was dropped (llm-d's reasons).
pub const DROPPED_REASON_HEADER: &str = "x-llm-d-request-dropped-reason";

/// Client model name → the model (or adapter) the pool serves it with. Applied before
/// scheduling; the request body is rewritten to the target name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelRewrites {
    map: HashMap<String, String>,
}

/// A bad `FROM=TO` or `NAME=PRIORITY` entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid model rewrite `{0}` (expected FROM=TO with both names non-empty)")]
    BadRewrite(String),
    #[error("model rewrite `{from}` is listed twice (to `{first}` and to `{second}`)")]
    DuplicateRewrite {
        from: String,
        first: String,
        second: String,
    },
    #[error("invalid objective `{0}` (expected NAME=PRIORITY, PRIORITY an integer)")]
    BadObjective(String),
}

impl ModelRewrites {
    /// From `FROM=TO` entries (each may itself be a comma-separated list).
    pub fn parse<I, S>(entries: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut map = HashMap::new();
        let pairs = parse_pairs(entries, PolicyError::BadRewrite, |from, to| {
            (!from.is_empty() && !to.is_empty()).then(|| (from.to_owned(), to.to_owned()))
        })?;
        for (from, to) in pairs {
            if let Some(first) = map.insert(from.clone(), to.clone())
                && first != to
            {
                return Err(PolicyError::DuplicateRewrite {
                    from,
                    first,
                    second: to,
                });
            }
        }
        Ok(Self { map })
    }

    /// The model a request for `model` is served with.
    pub fn target<'a>(&'a self, model: &'a str) -> &'a str {
        self.map.get(model).map_or(model, String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// InferenceObjective name → priority (negative = sheddable). Replaced whole when the cluster's
/// objectives change; read once per request.
#[derive(Debug, Default)]
pub struct Objectives {
    /// Priorities given on the command line; the cluster's objectives override them by name.
    configured: HashMap<String, i32>,
    current: ArcSwap<HashMap<String, i32>>,
}

impl Objectives {
    pub fn new(configured: HashMap<String, i32>) -> Self {
        Self {
            current: ArcSwap::from_pointee(configured.clone()),
            configured,
        }
    }

    /// From `NAME=PRIORITY` entries (each may be a comma-separated list).
    pub fn parse<I, S>(entries: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let pairs = parse_pairs(entries, PolicyError::BadObjective, |name, priority| {
            let priority = priority.parse::<i32>().ok()?;
            (!name.is_empty()).then(|| (name.to_owned(), priority))
        })?;
        let map = pairs.into_iter().collect();
        Ok(Self::new(map))
    }

    /// Priority of requests naming `objective`; 0 for none or an unknown one (as upstream).
    pub fn priority(&self, objective: Option<&str>) -> i32 {
        objective.map_or(0, |name| {
            self.current.load().get(name).copied().unwrap_or(0)
        })
    }

    /// Installs the cluster's objectives (on top of the configured ones).
    pub fn set_cluster(&self, cluster: impl IntoIterator<Item = (String, i32)>) {
        let mut merged = self.configured.clone();
        merged.extend(cluster);
        if **self.current.load() != merged {
            self.current.store(Arc::new(merged));
        }
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, i32>> {
        self.current.load_full()
    }
}

/// The `A=B` items of comma-separated `entries`, each parsed by `parse` (given both sides,
/// trimmed); an item without `=` or that `parse` refuses becomes `error(item)`.
fn parse_pairs<I, S, T>(
    entries: I,
    error: fn(String) -> PolicyError,
    parse: impl Fn(&str, &str) -> Option<(String, T)>,
) -> Result<Vec<(String, T)>, PolicyError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    for entry in entries {
        for item in entry
            .as_ref()
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let pair = item
                .split_once('=')
                .and_then(|(left, right)| parse(left.trim(), right.trim()))
                .ok_or_else(|| error(item.to_owned()))?;
            out.push(pair);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_parse_and_apply() {
        let rewrites = ModelRewrites::parse(["a=b, c = d", "e=f"]).unwrap();
        assert_eq!(rewrites.target("a"), "b");
        assert_eq!(rewrites.target("c"), "d");
        assert_eq!(rewrites.target("zzz"), "zzz");
        assert!(matches!(
            ModelRewrites::parse(["a="]),
            Err(PolicyError::BadRewrite(_))
        ));
        assert!(matches!(
            ModelRewrites::parse(["a=b", "a=c"]),
            Err(PolicyError::DuplicateRewrite { .. })
        ));
        assert!(ModelRewrites::parse(["a=b", "a=b"]).is_ok());
    }

    #[test]
    fn objectives_merge_cluster_over_flags() {
        let objectives = Objectives::parse(["chat=10,batch=-1"]).unwrap();
        assert_eq!(objectives.priority(Some("batch")), -1);
        assert_eq!(objectives.priority(Some("nope")), 0);
        assert_eq!(objectives.priority(None), 0);
        objectives.set_cluster([("batch".to_owned(), 3), ("eval".to_owned(), -5)]);
        assert_eq!(objectives.priority(Some("batch")), 3);
        assert_eq!(objectives.priority(Some("eval")), -5);
        assert_eq!(objectives.priority(Some("chat")), 10);
        assert!(matches!(
            Objectives::parse(["x=high"]),
            Err(PolicyError::BadObjective(_))
        ));
    }
}
