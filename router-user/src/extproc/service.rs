//! The `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service: one task per stream reads
//! Envoy's messages continuously (Envoy applies no backpressure and must never see a stalled
//! side stream) and runs them through an [`Exchange`].
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::exchange::{Exchange, ExchangeConfig, Step};
use crate::serving::Admission;

/// The ext-proc service; cheap to clone.
#[derive(Clone, Debug)]
pub struct ExtProcService {
    admission: Arc<Admission>,
    config: Arc<ExchangeConfig>,
}

impl ExtProcService {
    pub fn new(admission: Arc<Admission>, config: ExchangeConfig) -> Self {
        Self {
            admission,
            config: Arc::new(config),
        }
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (answers, outbound) = mpsc::unbounded_channel();
        let mut exchange = Exchange::new(self.admission.clone(), self.config.clone());
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(4);
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    // EOF, CANCELLED or a broken stream: dropping the exchange releases the
                    // request's in-flight state.
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(),
                            "ext-proc stream ended by the gateway");
                        return;
                    }
                };
                let step = exchange.on_message(message, &mut out);
                for answer in out.drain(..) {
                    if answers.send(Ok(answer)).is_err() {
                        return;
                    }
                }
                exchange.after_send();
                match step {
                    Ok(Step::Continue) => {}
                    Ok(Step::Close) => return,
                    Err(status) => {
                        tracing::warn!(error = %status.message(), "ext-proc protocol violation");
                        let _ = answers.send(Err(status));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            outbound,
        ))))
    }
}
