//! A greeter served over gRPC by tonic behind
//! [`ApiKeyLayer`](apikey_cache_tower::ApiKeyLayer).
//!
//! The messages, the service and the client are written by hand (what
//! `tonic-build` would generate from the proto below), so building the
//! demo needs no `protoc`:
//!
//! ```text
//! package demo;
//! service Greeter { rpc SayHello (HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; string key_id = 2; string owner = 3; }
//! ```
//!
//! The client sends its key as metadata (`authorization: Bearer ...` or
//! `x-api-key`); a refused call gets a `tonic::Status` (`Unauthenticated`,
//! `PermissionDenied`, `ResourceExhausted`, `Unavailable`) from the layer.
//!
//! ```no_run
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//! use apikey_cache_examples::grpc::{serve, GreeterClient, HelloRequest};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(serve(cache, listener, std::future::pending()));
//! let mut client = GreeterClient::connect(format!("http://{addr}")).await?;
//! let status = client
//!     .say_hello(tonic::Request::new(HelloRequest { name: "you".into() }))
//!     .await
//!     .expect_err("no key");
//! assert_eq!(status.code(), tonic::Code::Unauthenticated);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use apikey_cache::{ApiKeyCache, VerifiedKey};
use apikey_cache_tower::ApiKeyLayer;
use http::uri::PathAndQuery;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The scope a key needs to call the greeter.
///
/// ```
/// assert_eq!(apikey_cache_examples::grpc::GREET_SCOPE, "greeter:hello");
/// ```
pub const GREET_SCOPE: &str = "greeter:hello";

/// The gRPC path of `demo.Greeter/SayHello`.
///
/// ```
/// assert_eq!(apikey_cache_examples::grpc::SAY_HELLO, "/demo.Greeter/SayHello");
/// ```
pub const SAY_HELLO: &str = "/demo.Greeter/SayHello";

/// `demo.HelloRequest`.
///
/// ```
/// use apikey_cache_examples::grpc::HelloRequest;
/// use prost::Message;
///
/// let req = HelloRequest { name: "you".into() };
/// assert_eq!(HelloRequest::decode(&*req.encode_to_vec()).ok(), Some(req));
/// ```
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `demo.HelloReply`: the greeting and the key the handler saw.
///
/// ```
/// use apikey_cache_examples::grpc::HelloReply;
///
/// let reply = HelloReply::default();
/// assert!(reply.key_id.is_empty());
/// ```
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The id of the verified key, as the handler found it.
    #[prost(string, tag = "2")]
    pub key_id: String,
    /// The key's owner.
    #[prost(string, tag = "3")]
    pub owner: String,
}

/// The `demo.Greeter` service: a tonic server for [`SAY_HELLO`], every
/// other path `UNIMPLEMENTED`. Serve it behind [`ApiKeyLayer`], as
/// [`serve`] does.
///
/// ```
/// use apikey_cache_examples::grpc::GreeterServer;
/// use tonic::server::NamedService;
///
/// assert_eq!(GreeterServer::NAME, "demo.Greeter");
/// ```
#[derive(Debug, Clone, Default)]
pub struct GreeterServer;

impl tonic::server::NamedService for GreeterServer {
    const NAME: &'static str = "demo.Greeter";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower::Service<http::Request<B>> for GreeterServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == SAY_HELLO {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(SayHello, req).await)
            })
        } else {
            Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) })
        }
    }
}

/// The handler of `SayHello`.
#[derive(Clone, Copy)]
struct SayHello;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Result<Response<HelloReply>, Status>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        // tonic carries the HTTP request's extensions over, so the key the
        // layer verified is here; without the layer there is none, and
        // greeting anyway would serve unauthenticated calls.
        let key = request.extensions().get::<VerifiedKey>().cloned();
        let name = request.into_inner().name;
        Box::pin(async move {
            let key = key.ok_or_else(|| Status::internal("the API key layer is not applied"))?;
            Ok(Response::new(HelloReply {
                message: format!("hello, {name}"),
                key_id: key.id.as_str().to_owned(),
                owner: key.owner.clone(),
            }))
        })
    }
}

/// Serves [`GreeterServer`] behind [`ApiKeyLayer`] (requiring
/// [`GREET_SCOPE`]) on `listener` until `shutdown` resolves.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// apikey_cache_examples::grpc::serve(cache, listener, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    cache: ApiKeyCache,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(ApiKeyLayer::new(cache).require([GREET_SCOPE]))
        .add_service(GreeterServer)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// A client of `demo.Greeter`.
///
/// ```no_run
/// use apikey_cache_examples::grpc::{GreeterClient, HelloRequest};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = GreeterClient::connect("http://127.0.0.1:50051").await?;
/// let mut req = tonic::Request::new(HelloRequest { name: "you".into() });
/// req.metadata_mut().insert("x-api-key", "ak_...".parse()?);
/// let reply = client.say_hello(req).await?;
/// println!("{}", reply.get_ref().message);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GreeterClient {
    inner: tonic::client::Grpc<Channel>,
}

impl GreeterClient {
    /// Connects to `dst` (e.g. `http://127.0.0.1:50051`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tonic::transport::Error> {
    /// let client = apikey_cache_examples::grpc::GreeterClient::connect("http://[::1]:50051").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(dst: impl Into<String>) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(dst.into())?.connect().await?;
        Ok(Self {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    /// Calls `SayHello`; a refusal of the API key layer is the `Err`.
    ///
    /// ```no_run
    /// # use apikey_cache_examples::grpc::{GreeterClient, HelloRequest};
    /// # async fn run(mut client: GreeterClient) {
    /// let mut req = tonic::Request::new(HelloRequest { name: "you".into() });
    /// req.metadata_mut()
    ///     .insert("authorization", "Bearer ak_...".parse().expect("ASCII"));
    /// match client.say_hello(req).await {
    ///     Ok(reply) => println!("{}", reply.get_ref().message),
    ///     Err(status) => println!("{:?}: {}", status.code(), status.message()),
    /// }
    /// # }
    /// ```
    pub async fn say_hello(
        &mut self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("greeter not ready: {e}")))?;
        let codec: ProstCodec<HelloRequest, HelloReply> = ProstCodec::default();
        self.inner
            .unary(request, PathAndQuery::from_static(SAY_HELLO), codec)
            .await
    }
}
