//! The one client of the control API: the token, the timeouts, the
//! caller's name and the mapping of answers to [`Error`] in one place.
//!
//! The CLI, a node forwarding a command to a peer, the upgrade coordinator
//! and the relay's commit hook all go through it, with the types of
//! [`super::types`] on both ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_sync::fencing::Fencing;

use super::types::{
    ClusterReport, CommandReply, CommandRequest, CommitRequest, ErrorBody, ListenerRequest,
    StatusReport,
};
use crate::Error;

/// How long a call may take unless the client says otherwise: a peer that
/// takes longer is as good as gone for `tandem status`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// An agent's API, ready to call.
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: String,
    /// Sent as `x-tandem-user` on mutating calls, for the agent's log.
    user: String,
    timeout: Duration,
    http: reqwest::Client,
    /// This agent's fencing epochs: its writes carry its own (agents only).
    fencing: Option<Arc<Fencing>>,
}

/// The header an agent's writes carry its fencing epoch in; a receiver
/// that knows a newer epoch refuses the write (409).
pub const EPOCH_HEADER: &str = "tandem-epoch";

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ApiClient {
    /// A client for the agent at `addr` with the cluster's API token.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Result<ApiClient, Error> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::State(format!("HTTP client: {e}")))?;
        Ok(ApiClient {
            addr,
            token: token.into(),
            user: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            timeout: DEFAULT_TIMEOUT,
            http,
            fencing: None,
        })
    }

    /// The same, with calls bounded by `timeout` instead.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The same, stamping every write with this agent's fencing epoch
    /// (`coordination = "etcd"`; nothing while it holds none).
    pub fn with_fencing(mut self, fencing: Arc<Fencing>) -> ApiClient {
        self.fencing = Some(fencing);
        self
    }

    /// The same, naming `user` as the caller in the agent's log.
    pub fn on_behalf_of(mut self, user: impl Into<String>) -> ApiClient {
        self.user = user.into();
        self
    }

    /// The same token and settings, another agent.
    pub fn at(&self, addr: SocketAddr) -> ApiClient {
        ApiClient {
            addr,
            ..self.clone()
        }
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A request with the token, the caller and the timeout set, for
    /// answers read as a stream (resync progress).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let epoch = self
            .fencing
            .as_ref()
            .map(|f| f.own())
            .filter(|e| *e > 0 && method != Method::GET);
        let request = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token)
            .header("x-tandem-user", &self.user)
            .timeout(self.timeout);
        match epoch {
            Some(epoch) => request.header(EPOCH_HEADER, epoch),
            None => request,
        }
    }

    /// GET `path`; any non-2xx answer is an error.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(self.request(Method::GET, path), path, false)
            .await
    }

    /// POST `body` to `path`; any non-2xx answer is an error.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.call(self.request(Method::POST, path).json(body), path, false)
            .await
    }

    /// PUT `body` to `path` as JSON; any non-2xx answer is an error.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.call(self.request(Method::PUT, path).json(body), path, false)
            .await
    }

    /// PUT raw bytes (an image, a config file), with their sha256 when
    /// known so the agent can check them; any non-2xx answer is an error.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
        sha256: Option<&str>,
    ) -> Result<T, Error> {
        let mut request = self.request(Method::PUT, path).body(bytes);
        if let Some(sha) = sha256 {
            request = request.header("x-sha256", sha);
        }
        self.call(request, path, false).await
    }

    /// DELETE `path`; any non-2xx answer is an error.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(self.request(Method::DELETE, path), path, false)
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusReport, Error> {
        self.get("/v1/status").await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterReport, Error> {
        self.get("/v1/cluster").await
    }

    /// `POST /v1/command`: a refusal (409) is an answer, not an error.
    pub async fn command(&self, request: &CommandRequest) -> Result<CommandReply, Error> {
        self.post_refusable("/v1/command", request).await
    }

    /// `POST /v1/listener`: a refusal (409) is an answer, not an error.
    pub async fn listener(&self, request: &ListenerRequest) -> Result<CommandReply, Error> {
        self.post_refusable("/v1/listener", request).await
    }

    /// `POST /v1/sync/commit`: returns once the standbys the sync mode
    /// requires have the files.
    pub async fn commit(&self, request: &CommitRequest) -> Result<(), Error> {
        let _: serde_json::Value = self.post("/v1/sync/commit", request).await?;
        Ok(())
    }

    /// POST where 409 carries the agent's answer (a refused command).
    async fn post_refusable<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.call(self.request(Method::POST, path).json(body), path, true)
            .await
    }

    /// Sends `request` and reads its JSON answer: 2xx (and 409 when
    /// `refusal_is_answer`) parse as `T`, anything else is [`Error::ApiRefused`].
    async fn call<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        path: &str,
        refusal_is_answer: bool,
    ) -> Result<T, Error> {
        let unreachable = |source: reqwest::Error| Error::ApiUnreachable {
            addr: self.addr,
            path: path.to_string(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if status.is_success() || refusal_is_answer && status == StatusCode::CONFLICT {
            return serde_json::from_slice(&body).map_err(|e| Error::ApiAnswer {
                addr: self.addr,
                path: path.to_string(),
                detail: e.to_string(),
            });
        }
        let body: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
            error: String::from_utf8_lossy(&body).trim().to_string(),
            ..ErrorBody::default()
        });
        Err(Error::ApiRefused {
            addr: self.addr,
            path: path.to_string(),
            status: status.as_u16(),
            body: Box::new(body),
        })
    }
}
