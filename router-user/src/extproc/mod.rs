//! The Envoy ext-proc endpoint picker (`switchyard epp`): Envoy streams each request's headers
//! and body here (FULL_DUPLEX_STREAMED), the picker parses the OpenAI body, runs the scheduler,
//! and answers with the destination in the `x-gateway-destination-endpoint` header and the
//! `envoy.lb` dynamic metadata, following the Gateway API Inference Extension's endpoint-picker
//! protocol. Protocol behaviour, flags and metrics: `docs/epp.md`.
//!
//! - [`protocol`]: message readers and answer builders (Envoy's rules).
//! - [`exchange`]: one stream's state machine.
//! - [`service`]: the tonic `ExternalProcessor` service.
//! - [`server`]: listeners, health, TLS, drain; [`server::grpc_routes`] lists the services of
//!   the ext-proc port.
//! - [`tls`]: certificates; [`cli`]: `switchyard epp`; [`envoy`]: Envoy's messages, for tools
//!   and tests that play Envoy.
pub mod cli;
pub mod envoy;
pub mod exchange;
pub mod protocol;
pub mod server;
pub mod service;
pub mod tls;

pub use exchange::{Exchange, ExchangeConfig, Step};
pub use server::{
    EXT_PROC_SERVICE, EppError, EppServer, EppServerConfig, NodeReportsConfig, grpc_routes,
};
pub use service::ExtProcService;
pub use tls::{TlsMaterial, TlsSource};
