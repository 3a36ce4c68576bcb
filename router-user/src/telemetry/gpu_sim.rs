//! GPU readings from the simulated model servers: `GET http://<sim>/sim/gpu` answers
//! `{"gpus": [GpuSample, ...]}`, values consistent with the load the simulator carries, so the
//! agent sees the same kind of data in tests and demos as on a GPU node.
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use http::Uri;
use serde::{Deserialize, Serialize};

use crate::telemetry::gpu::GpuSample;
use crate::telemetry::gpu_source::{GpuError, GpuReadings, GpuTelemetry, TelemetryState};
use crate::telemetry::http::HttpGetter;

/// The path the simulated servers serve their GPU view on.
pub const SIM_GPU_PATH: &str = "/sim/gpu";
/// The body of `GET /sim/gpu`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimGpuPage {
    pub gpus: Vec<GpuSample>,
}

const MAX_PAGE_BYTES: usize = 1 << 20;

pub struct SimGpuTelemetry {
    endpoints: Vec<(SocketAddr, Option<Uri>)>,
    getter: HttpGetter,
    timeout: Duration,
}

impl SimGpuTelemetry {
    pub fn new(endpoints: Vec<SocketAddr>, timeout: Duration) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|addr| (addr, format!("http://{addr}{SIM_GPU_PATH}").parse().ok()))
            .collect();
        Self {
            endpoints,
            getter: HttpGetter::new(timeout),
            timeout,
        }
    }

    async fn fetch(&self, addr: SocketAddr, uri: Option<&Uri>) -> Result<Vec<GpuSample>, String> {
        let uri = uri.ok_or_else(|| format!("cannot build a URI for {addr}"))?;
        let mut body = Vec::new();
        tokio::time::timeout(
            self.timeout,
            self.getter
                .get_into(uri, "application/json", &mut body, MAX_PAGE_BYTES),
        )
        .await
        .map_err(|_| format!("timed out after {:?}", self.timeout))?
        .map_err(|err| err.to_string())?;
        serde_json::from_slice::<SimGpuPage>(&body)
            .map(|page| page.gpus)
            .map_err(|err| format!("bad {SIM_GPU_PATH} body: {err}"))
    }
}

impl GpuTelemetry for SimGpuTelemetry {
    fn state(&self) -> TelemetryState {
        TelemetryState::Sim
    }

    fn sample(&self) -> BoxFuture<'_, GpuReadings> {
        Box::pin(async move {
            let fetches = self
                .endpoints
                .iter()
                .map(|(addr, uri)| async move { (*addr, self.fetch(*addr, uri.as_ref()).await) });
            let mut readings = GpuReadings::default();
            for (addr, result) in join_all(fetches).await {
                match result {
                    Ok(gpus) => readings.samples.extend(gpus),
                    Err(message) => readings.errors.push(GpuError {
                        gpu: None,
                        source: addr.to_string(),
                        field: None,
                        message,
                        lost: false,
                    }),
                }
            }
            readings
        })
    }
}
