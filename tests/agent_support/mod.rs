//! Helpers shared by the agent's integration tests: an EPP-side node-report service on its own
//! runtime (so a test can kill it the way a crashed EPP dies), and polling.
#![allow(dead_code)]
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::agent::tls::TlsFiles;
use switchyard::cluster::EndpointTable;
use switchyard::cluster::reports::{NodeReportsService, PoolDirectory, ReportsOptions};
use tokio::sync::{oneshot, watch};

/// A node-report service on a loopback port, running on its own runtime in its own thread.
/// Dropping it (or [`EppServer::kill`]) tears the runtime down: every connection dies at once,
/// as when the EPP process is killed.
pub struct EppServer {
    pub addr: SocketAddr,
    pub table: Arc<EndpointTable>,
    pub service: NodeReportsService,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EppServer {
    /// Serves on `addr` (port 0: any free port).
    pub fn start(
        addr: SocketAddr,
        table: Arc<EndpointTable>,
        directory: PoolDirectory,
        tls: Option<TlsFiles>,
    ) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let service_table = table.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("EPP runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("bind the EPP port");
                let local = listener.local_addr().expect("local address");
                let options = ReportsOptions {
                    epp_name: "test-epp".into(),
                    ..ReportsOptions::default()
                };
                let service =
                    NodeReportsService::new(service_table, directory, options).expect("service");
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = &tls {
                    builder = builder
                        .tls_config(tls.server_config().expect("server TLS"))
                        .expect("TLS config");
                }
                let router = builder.add_service(service.server());
                ready_tx.send((local, service)).expect("report readiness");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::select! {
                    result = router.serve_with_incoming(incoming) => {
                        if let Err(err) = result {
                            eprintln!("EPP server ended: {err}");
                        }
                    }
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here aborts every connection task.
            drop(runtime);
        });
        let (addr, service) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the EPP server starts");
        Self {
            addr,
            table,
            service,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server and drops every connection.
    pub fn kill(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Node reports the service applied so far.
    pub fn reports_applied(&self) -> u64 {
        self.service
            .stats()
            .reports
            .get_or_create(&vec![("outcome".to_owned(), "applied".to_owned())])
            .get()
    }

    pub fn covered(&self) -> watch::Receiver<HashSet<SocketAddr>> {
        self.service.covered()
    }
}

impl Drop for EppServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Polls `check` every 10 ms until it holds or `limit` passes (then panics naming `what`).
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
