//! The built-in profiles, each written as the YAML a user could load instead.
//!
//! The benchmark compares them; none is a special case in the scheduler or the simulator.

/// Names accepted by [`Scheduler::builtin`](super::Scheduler::builtin).
pub const BUILTIN_PROFILES: [&str; 7] = [
    "random",
    "round-robin",
    "least-request",
    "gie-default",
    "sglang-cache-aware",
    "switchyard",
    "oracle",
];

const RANDOM: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: random-picker
schedulingProfiles:
- name: random
  plugins:
  - pluginRef: random-picker
";

const ROUND_ROBIN: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: round-robin-picker
schedulingProfiles:
- name: round-robin
  plugins:
  - pluginRef: round-robin-picker
";

/// The router's own in-flight requests, fewest first.
const LEAST_REQUEST: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: inflight-scorer
  parameters:
    mode: requests
- type: max-score-picker
schedulingProfiles:
- name: least-request
  plugins:
  - pluginRef: inflight-scorer
  - pluginRef: max-score-picker
";

/// GIE's default profile: queue 2, KV cache 2, prefix cache 3, max-score picker.
const GIE_DEFAULT: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters:
    lruCapacityPerServer: 31250
    maxPrefixBlocksToMatch: 256
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: gie-default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
";

/// SGLang router's cache-aware policy with its default thresholds.
const SGLANG_CACHE_AWARE: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: cache-aware-scorer
  parameters:
    cacheThreshold: 0.3
    balanceAbsThreshold: 64
    balanceRelThreshold: 1.5
    maxTreeSize: 262144
- type: max-score-picker
schedulingProfiles:
- name: sglang-cache-aware
  plugins:
  - pluginRef: cache-aware-scorer
  - pluginRef: max-score-picker
";

/// Switchyard's profile: the TTFT cost model (prefix affinity weighed against the queue it
/// joins and the prefill work this router sent there, with in-flight accounting between
/// samples), KV headroom, GPU signals, LoRA and session affinity; sick GPUs filtered out; beyond
/// 128 endpoints, the affine ones plus a random 128 are scored (power of d choices). Weights and
/// parameters were tuned in the cluster simulation (docs/benchmarks.md). See
/// docs/scheduling.md.
const SWITCHYARD: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: gpu-health-filter
- type: affinity-sample-filter
  parameters:
    sampleSize: 128
- type: ttft-scorer
  parameters:
    queueCost: 1.0
    queueMissFloor: 0.1
    runningCost: 0.001
    kvSoftLimit: 0.8
    kvCost: 4.0
    throttleSlowdown: 0.5
    smoothing: 0.1
    prefillTokensPerSecond: 30000
    backlogCost: 1.0
- type: kv-cache-utilization-scorer
- type: gpu-scorer
- type: lora-affinity-scorer
- type: session-affinity-scorer
- type: max-score-picker
  parameters:
    maxNumOfEndpoints: 3
schedulingProfiles:
- name: switchyard
  plugins:
  - pluginRef: gpu-health-filter
  - pluginRef: affinity-sample-filter
  - pluginRef: ttft-scorer
    weight: 5
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: gpu-scorer
    weight: 1
  - pluginRef: lora-affinity-scorer
    weight: 20
  - pluginRef: session-affinity-scorer
    weight: 1
  - pluginRef: max-score-picker
";

/// The same cost model on the simulation's exact engine state: an upper bound to compare with.
const ORACLE: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: oracle-scorer
- type: max-score-picker
schedulingProfiles:
- name: oracle
  plugins:
  - pluginRef: oracle-scorer
  - pluginRef: max-score-picker
";

/// The YAML of a built-in profile.
pub fn builtin_yaml(name: &str) -> Option<&'static str> {
    Some(match name {
        "random" => RANDOM,
        "round-robin" => ROUND_ROBIN,
        "least-request" => LEAST_REQUEST,
        "gie-default" => GIE_DEFAULT,
        "sglang-cache-aware" => SGLANG_CACHE_AWARE,
        "switchyard" => SWITCHYARD,
        "oracle" => ORACLE,
        _ => return None,
    })
}
