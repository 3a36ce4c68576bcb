//! The endpoint picker's transport and lifecycle: TLS (self-signed and from a certificate
//! directory), gRPC health on both ports, graceful drain on shutdown, config hot reload.
mod extproc_support;
use extproc_support::*;

use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use switchyard::extproc::TlsSource;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

async fn tls_client(epp: &Epp, ca_pem: &str) -> ExternalProcessorClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", epp.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    ExternalProcessorClient::new(channel)
}

async fn route_once(client: &mut ExternalProcessorClient<Channel>) -> RoutedRequest {
    let mut stream = EnvoyStream::open(client).await;
    send_request(&mut stream, &post_headers(&[]), &[chat_body("m", "tls")])
        .await
        .expect("routed")
}

#[tokio::test]
async fn tls_with_a_self_signed_certificate() {
    let endpoints = addrs(&[8001, 8002]);
    let mut config = plaintext_config();
    config.tls = Some(TlsSource::SelfSigned);
    let epp = Epp::start(static_args(&endpoints, "gie-default"), config).await;
    let certificate = epp.certificate.clone().expect("TLS is on");
    let mut client = tls_client(&epp, &certificate).await;
    let routed = route_once(&mut client).await;
    assert!(endpoints.contains(&routed.destination.parse().unwrap()));
    // A plaintext client cannot speak to the TLS port.
    let plaintext = Channel::from_shared(format!("http://{}", epp.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let mut client = ExternalProcessorClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        assert!(
            client
                .process(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn tls_with_a_certificate_directory() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), certified.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("tls.key"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let mut config = plaintext_config();
    config.tls = Some(TlsSource::Dir(dir.path().to_owned()));
    let epp = Epp::start(static_args(&addrs(&[8001]), "gie-default"), config).await;
    assert_eq!(
        epp.certificate.as_deref(),
        Some(certified.cert.pem().as_str())
    );
    let mut client = tls_client(&epp, &certified.cert.pem()).await;
    assert_eq!(route_once(&mut client).await.destination, "10.0.0.1:8001");

    let mut missing = plaintext_config();
    missing.tls = Some(TlsSource::Dir(dir.path().join("nope")));
    let serving = std::sync::Arc::new(
        switchyard::serving::Serving::start(
            &static_args(&addrs(&[8001]), "gie-default"),
            switchyard::serving::EjectionPolicy::default(),
            tokio::sync::watch::channel(Default::default()).1,
        )
        .await
        .unwrap(),
    );
    let err = switchyard::extproc::EppServer::bind(
        missing,
        serving,
        tokio::sync::watch::channel(Default::default()).0,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls.crt"), "{err}");
}

#[tokio::test]
async fn health_on_both_ports() {
    let epp = Epp::start(
        static_args(&addrs(&[8001]), "gie-default"),
        plaintext_config(),
    )
    .await;
    for service in [
        "liveness",
        "readiness",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "",
    ] {
        wait_status(epp.health, service, SERVING).await;
    }
    assert_eq!(
        Epp::health_status(epp.health, "no.such.Service").await,
        Err(tonic::Code::NotFound)
    );
    // Envoy health-checks the ext-proc cluster on its own port.
    assert_eq!(
        Epp::health_status(epp.grpc, "envoy.service.ext_proc.v3.ExternalProcessor").await,
        Ok(SERVING)
    );
}

async fn wait_status(addr: std::net::SocketAddr, service: &str, want: i32) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if Epp::health_status(addr, service).await == Ok(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn drain_keeps_streams_in_flight_and_stops_new_ones() {
    let mut config = plaintext_config();
    config.drain_period = Duration::from_millis(600);
    let epp = Epp::start(static_args(&addrs(&[8001]), "gie-default"), config).await;
    wait_status(epp.health, "readiness", SERVING).await;
    let mut client = epp.client().await;
    let mut in_flight = EnvoyStream::open(&mut client).await;
    send_request(
        &mut in_flight,
        &post_headers(&[]),
        &[chat_body("m", "long stream")],
    )
    .await
    .unwrap();
    in_flight
        .send(response_headers(200, "text/event-stream", false))
        .await;
    in_flight.recv().await.unwrap();

    epp.shutdown.cancel();
    wait_status(epp.health, "readiness", NOT_SERVING).await;
    assert_eq!(
        Epp::health_status(epp.health, "envoy.service.ext_proc.v3.ExternalProcessor").await,
        Ok(NOT_SERVING)
    );
    assert_eq!(
        Epp::health_status(epp.health, "liveness").await,
        Ok(SERVING)
    );
    // During the drain period new streams are still served.
    let routed = route_once(&mut client).await;
    assert_eq!(routed.destination, "10.0.0.1:8001");

    // After it the listener is closed, but the stream in flight runs to its end.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        tokio::net::TcpStream::connect(epp.grpc).await.is_err(),
        "no new connections after the drain period"
    );
    in_flight
        .send(response_body(
            b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n",
            true,
        ))
        .await;
    let (echo, eos) = streamed_chunk(&in_flight.recv().await.unwrap()).unwrap();
    assert!(eos && !echo.is_empty());
    in_flight.close_send();
    assert!(in_flight.recv().await.is_none());
    drop(in_flight);
    drop(client);
    tokio::time::timeout(STEP, epp.task)
        .await
        .expect("the server stops once the streams ended")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn config_file_is_reloaded_and_bad_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let config = |name: &str| {
        format!(
            "plugins:\n- type: queue-scorer\n- type: max-score-picker\nschedulingProfiles:\n- name: {name}\n  plugins:\n  - pluginRef: queue-scorer\n  - pluginRef: max-score-picker\n"
        )
    };
    std::fs::write(&path, config("first")).unwrap();
    let mut args = static_args(&addrs(&[8001]), "unused");
    args.scheduler.profile = None;
    args.scheduler.config = Some(path.clone());
    let epp = Epp::start(args, plaintext_config()).await;
    let name = || {
        epp.serving
            .admission()
            .scheduler()
            .current()
            .name()
            .to_owned()
    };
    assert_eq!(name(), "first");
    std::fs::write(&path, config("second")).unwrap();
    wait_until("reloaded", || name() == "second").await;
    std::fs::write(
        &path,
        "plugins: [{type: no-such-plugin}]\nschedulingProfiles: []\n",
    )
    .unwrap();
    let metrics = epp.serving.metrics().clone();
    wait_until("rejected reload counted", || {
        metrics
            .encode()
            .contains("switchyard_config_reloads_total{result=\"rejected\"} 1")
    })
    .await;
    assert_eq!(
        name(),
        "second",
        "an invalid config never replaces a valid one"
    );
    // Requests still route.
    let mut client = epp.client().await;
    assert_eq!(route_once(&mut client).await.destination, "10.0.0.1:8001");
}
