//! The demo's simulated model servers: four vLLM-like servers of one model on loopback, each
//! with a trait that makes routing matter (shared system prompts, LoRA slots, a slow GPU).
use std::net::SocketAddr;

use crate::sim::{LoraModule, Profile, RunningServer, ServerConfig, ServerError, SimServer};

/// The model every server serves (requests name it, or one of [`ADAPTERS`]).
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
/// LoRA adapters every server can load; how many fit at once differs per server.
pub const ADAPTERS: [&str; 4] = ["sql-lora", "chat-lora", "code-lora", "math-lora"];
/// KV cache per server, in tokens: smaller than the workload's system prompts together, so
/// where a prompt goes decides whether its prefix is still cached (as on a busy real GPU).
pub const KV_CAPACITY_TOKENS: u64 = 64_000;

/// One server of the fleet and why it is there.
#[derive(Clone, Debug)]
pub struct ServerRole {
    pub name: &'static str,
    pub trait_shown: &'static str,
    pub max_loras: u32,
    /// GPU slowdown (1.0 nominal).
    pub slow_gpu: f64,
}

/// The four servers, in order.
pub fn roles() -> Vec<ServerRole> {
    vec![
        ServerRole {
            name: "sim-0",
            trait_shown: "1 LoRA slot",
            max_loras: 1,
            slow_gpu: 1.0,
        },
        ServerRole {
            name: "sim-1",
            trait_shown: "1 LoRA slot",
            max_loras: 1,
            slow_gpu: 1.0,
        },
        ServerRole {
            name: "sim-2",
            trait_shown: "LoRA-heavy: 4 LoRA slots",
            max_loras: 4,
            slow_gpu: 1.0,
        },
        ServerRole {
            name: "sim-3",
            trait_shown: "slow GPU (steps take 2.5x), 1 LoRA slot",
            max_loras: 1,
            slow_gpu: 2.5,
        },
    ]
}

/// Running servers, stopped when dropped.
pub struct Fleet {
    pub roles: Vec<ServerRole>,
    servers: Vec<RunningServer>,
}

impl Fleet {
    /// Starts every role on 127.0.0.1 (free ports), virtual time `speed` times the wall clock.
    pub async fn start(speed: f64, seed: u64) -> Result<Self, ServerError> {
        let roles = roles();
        let mut servers = Vec::with_capacity(roles.len());
        for (index, role) in roles.iter().enumerate() {
            let config = ServerConfig {
                model: MODEL.to_owned(),
                lora_modules: ADAPTERS
                    .iter()
                    .map(|name| LoraModule {
                        name: (*name).to_owned(),
                        path: format!("/adapters/{name}"),
                    })
                    .collect(),
                max_loras: role.max_loras,
                profile: Profile {
                    kv_capacity_tokens: KV_CAPACITY_TOKENS,
                    ..Profile::default()
                },
                speed,
                seed: seed.wrapping_add(index as u64),
                slow_gpu: role.slow_gpu,
                gpu_index: index as u32,
                ..ServerConfig::default()
            };
            let server = SimServer::bind(config, "127.0.0.1:0").await?.spawn()?;
            servers.push(server);
        }
        Ok(Self { roles, servers })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// Stops every server, letting open requests end.
    pub async fn stop(self) {
        for server in self.servers {
            if let Err(err) = server.stop().await {
                tracing::warn!(error = %err, "a simulated server ended with an error");
            }
        }
    }
}
