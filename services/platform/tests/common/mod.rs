//! Test fixtures shared by the gRPC-level tests: a one-method gRPC service
//! (`test.Probe/Call`, a string in and a string out) whose behaviour each
//! test supplies as a closure, written with tonic's server and client
//! primitives directly so the platform's tests do not depend on the
//! services' proto contracts.

#![allow(dead_code)] // Each test binary uses a different part.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use commerce_platform::admin::Metrics;
use commerce_platform::grpc::{GrpcArgs, GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use http::uri::PathAndQuery;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::server::NamedService;
use tonic::{GrpcMethod, Request, Response, Status};
use tonic_prost::ProstCodec;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<dyn Fn(Request<String>) -> BoxFuture<Result<Response<String>, Status>> + Send + Sync>;

/// Full path of the probe's one method.
pub const PROBE_PATH: &str = "/test.Probe/Call";

/// A gRPC service with one unary method whose behaviour is a closure.
#[derive(Clone)]
pub struct Probe {
    handler: Handler,
}

impl Probe {
    pub fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<String>, Status>> + Send + 'static,
    {
        Self { handler: Arc::new(move |request| Box::pin(handler(request))) }
    }

    /// A probe that answers every call with `reply`.
    pub fn replying(reply: &'static str) -> Self {
        Self::new(move |_| async move { Ok(Response::new(reply.to_owned())) })
    }
}

impl NamedService for Probe {
    const NAME: &'static str = "test.Probe";
}

impl tower::Service<http::Request<Body>> for Probe {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let handler = self.handler.clone();
        Box::pin(async move {
            if request.uri().path() != PROBE_PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let method = tower::service_fn(move |request: Request<String>| handler(request));
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<String, String>::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// Calls the probe through any gRPC transport (a `Channel`, a
/// `ResilientChannel`, or a `Probe` in process).
pub async fn call<T>(transport: T, request: Request<String>) -> Result<String, Status>
where
    T: GrpcService<Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = tonic::client::Grpc::new(transport);
    grpc.ready().await.map_err(|error| Status::unavailable(error.into().to_string()))?;
    let mut request = request;
    request.extensions_mut().insert(GrpcMethod::new("test.Probe", "Call"));
    let response = grpc
        .unary(request, PathAndQuery::from_static(PROBE_PATH), ProstCodec::<String, String>::default())
        .await?;
    Ok(response.into_inner())
}

/// The probe's contract as an encoded `FileDescriptorSet`, for reflection.
pub fn probe_descriptor_set() -> &'static [u8] {
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
        ServiceDescriptorProto, field_descriptor_proto,
    };
    let set = FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("test/probe.proto".to_owned()),
            package: Some("test".to_owned()),
            syntax: Some("proto3".to_owned()),
            message_type: vec![DescriptorProto {
                name: Some("Text".to_owned()),
                field: vec![FieldDescriptorProto {
                    name: Some("value".to_owned()),
                    number: Some(1),
                    r#type: Some(field_descriptor_proto::Type::String as i32),
                    label: Some(field_descriptor_proto::Label::Optional as i32),
                    json_name: Some("value".to_owned()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("Probe".to_owned()),
                method: vec![MethodDescriptorProto {
                    name: Some("Call".to_owned()),
                    input_type: Some(".test.Text".to_owned()),
                    output_type: Some(".test.Text".to_owned()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Box::leak(set.encode_to_vec().into_boxed_slice())
}

/// A running test server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), GrpcServerError>>,
}

impl TestServer {
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a `GrpcServer` with `probe` on an ephemeral loopback port.
pub async fn start_server(
    probe: Probe,
    readiness: Readiness,
    metrics: &Metrics,
    grace: Duration,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let args = GrpcArgs { addr, shutdown_grace: grace };
    let server = GrpcServer::new(&args, readiness, metrics)
        .file_descriptor_set(probe_descriptor_set())
        .add_service(probe);
    let task = tokio::spawn(server.serve_on(listener, shutdown.clone()));
    TestServer { addr, shutdown, task }
}

/// Polls `condition` every 10 ms until it holds, failing the test with
/// `what` after `limit`. For conditions no event announces.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(limit, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out after {limit:?} waiting for {what}");
}
